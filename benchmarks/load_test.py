"""Bounded load test of the HTTP API (issue #5): p50/p99 latency, requests/s and errors.

Usage:
    python benchmarks/load_test.py --json reports/bench/load_test.json
    python benchmarks/load_test.py --smoke             # 2,000 products, 200 requests
    python benchmarks/load_test.py --skip-build --scenarios recommend,rerank

What it does:

1. **Prepares** (once per size and seed under ``--workdir``; re-runs reuse it) a synthetic
   catalogue (``newarrivals synth``), builds its index with the real pipeline
   (``newarrivals build-index``: bundled MiniLM text encoder + ``builtin:tiny`` image
   tower; the first build writes verified ONNX copies of the encoders, which the server
   then uses), and a second version of the same index with 1% of the products changed
   (new title and photo), which the hot-swap scenario swaps to. Unless ``--ranker DIR`` is
   given it also prepares the fastest serving ranker: a 2-layer MiniLM cross-encoder
   fine-tuned on a small synthetic catalogue (``train-ranker``, time-capped), distilled
   into a shared-context student exported to ONNX int8 (``distill-ranker --architecture
   shared-context --onnx int8``). The ranker's quality is not measured here, only its cost.
2. **Serves** the index with ``newarrivals serve`` as a separate process on a free loopback
   port (API key in its environment, a fresh journal per run) and waits for ``/readyz``.
3. **Drives** each scenario at each concurrency: ``--warmup`` unmeasured requests, then
   exactly ``--requests`` requests from ``concurrency`` asyncio workers sharing one httpx
   connection pool; it ends when they are all answered. The hot-swap scenario is the one
   exception: the reload starts with the measured requests and, if it has not finished by
   the time they are done, requests continue until it has and a further tenth of
   ``--requests`` has run on the new version (bounded by ``--reload-timeout``), so every
   swap happens under load.

Scenarios (``--scenarios``): ``recommend`` (a random known user, k=10, no re-ranking),
``rerank`` (the same with ``rerank=true``: the server's ``NEWARRIVALS_RERANK_DEPTH``, 50,
candidates re-scored), ``similar`` (a random product), ``cold-start`` (a new product's text;
``--photo-share`` of them with a small photo), ``recommend+events`` (``recommend`` while a
writer posts ``--event-rate`` events per second) and ``recommend+swap`` (``recommend``
while a new index version is published and ``POST /v1/admin/reload`` swaps to it).

The client runs on the same cores as the server (on the 2-core machine this was written
on, that is a large share of the CPU): its CPU use and the server's are printed per row,
as is the load average, since other work on the machine moves the figures too.

Output: a Markdown table on stdout (progress goes to stderr) with PASS/MISS against the
issue's targets, and with ``--json PATH`` a JSON list of rows ``{scenario, route,
concurrency, requests, p50_ms, p99_ms, rps, errors_5xx, ...}`` (what
``benchmarks/report.py`` reads). Exit status 1 when any request got a 5xx or no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import numpy as np
from PIL import Image

from newarrivals.indexer.catalog.readers import read_catalog
from newarrivals.indexer.catalog.schema import Product
from newarrivals.indexer.catalog.writers import write_catalog
from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.manifest import IndexManifest
from newarrivals.indexer.index.version import LATEST_FILE, MANIFEST_FILE, list_versions
from newarrivals.indexer.validation import require_int

#: Targets from issue #5, on the 2-core machine: (scenario, concurrency) -> p99 bound in ms.
P99_TARGETS_MS: Final = {("recommend", 8): 30.0, ("rerank", 1): 100.0}
SCENARIOS: Final = ("recommend", "rerank", "similar", "cold-start", "recommend+events")
ALL_SCENARIOS: Final = (*SCENARIOS, "recommend+swap")
#: anyio's default worker-thread limit, which runs FastAPI's sync route functions.
ROUTE_THREADS: Final = 40
RANKER_MANIFEST: Final = "ranker.json"
PREPARED_FILE: Final = "prepared.json"
Background = Literal["none", "events", "swap"]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class LoadConfig:
    """What one load-test run does (sizes, load shape, server settings).

    Example:
        >>> LoadConfig(products=2000, requests=200).users
        300
    """

    products: int = 100_000
    requests: int = 5_000
    concurrency: tuple[int, ...] = (1, 8, 32)
    warmup: int = 100
    seed: int = 0
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    event_rate: float = 20.0
    photo_share: float = 0.2
    server_threads: int = 1
    ready_timeout: float = 900.0
    reload_timeout: float = 900.0
    ranker_minutes: float = 3.0

    def __post_init__(self) -> None:
        require_int("products", self.products, minimum=100)
        require_int("requests", self.requests)
        require_int("warmup", self.warmup, minimum=0)
        require_int("server_threads", self.server_threads)
        if not self.concurrency:
            raise ConfigError("concurrency must list at least one level, e.g. --concurrency 1,8.")
        for level in self.concurrency:
            require_int("concurrency", level)
        unknown = [s for s in self.scenarios if s not in ALL_SCENARIOS]
        if unknown or not self.scenarios:
            raise ConfigError(
                f"unknown or empty scenarios {unknown or list(self.scenarios)}; choose from "
                f"{', '.join(ALL_SCENARIOS)}."
            )
        if not self.event_rate > 0:
            raise ConfigError(f"event_rate must be > 0 events/s, got {self.event_rate}.")
        if not 0 <= self.photo_share <= 1:
            raise ConfigError(f"photo_share must be in [0, 1], got {self.photo_share}.")
        for name in ("ready_timeout", "reload_timeout", "ranker_minutes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}.")

    @property
    def users(self) -> int:
        """Synthetic users: one per 20 products (5,000 at 100,000), at least 300."""
        return max(300, self.products // 20)

    @property
    def needs_ranker(self) -> bool:
        return "rerank" in self.scenarios


# ------------------------------------------------------------------------------ preparation


@dataclass(frozen=True)
class Prepared:
    """The prepared index root and its two versions (base, and 1% changed)."""

    catalog: Path
    index: Path
    base_version: str
    changed_version: str


def _cli(*args: str, nice: int = 0) -> list[str]:
    prefix = ["nice", "-n", str(nice)] if nice else []
    return [*prefix, sys.executable, "-m", "newarrivals.service.cli", *args]


def _run_step(what: str, cmd: Sequence[str], log: Path) -> None:
    """Run one preparation command, its output appended to ``log``; raise with its tail."""
    _log(f"{what} (log: {log})")
    t0 = time.perf_counter()
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed with exit status {code}:\n{tail}")
    _log(f"{what}: done in {time.perf_counter() - t0:.0f}s")


def _has_products(catalog: Path) -> bool:
    return any(catalog.glob("products.*"))


def _change_one_percent(source: Path, target: Path, seed: int) -> int:
    """Write ``source`` again into ``target`` with 1% of its products changed (title and
    photo), as a catalogue refresh would; unchanged photos stay where they are."""
    catalog = read_catalog(source)
    rng = np.random.default_rng(seed)
    n = max(1, len(catalog.products) // 100)
    picked = set(rng.choice(len(catalog.products), size=n, replace=False).tolist())
    photos = target / "images-changed"
    photos.mkdir(parents=True, exist_ok=True)
    products: list[Product] = []
    for i, product in enumerate(catalog.products):
        if i in picked:
            product = replace(product, title=f"{product.title} (new season)")
            if product.image:
                with Image.open(product.image) as img:
                    changed = img.convert("RGB")
                changed.putpixel((0, 0), (int(rng.integers(256)), 0, 0))
                path = photos / f"{Path(product.image).stem}-v2.png"
                changed.save(path)
                product = replace(product, image=str(path))
        products.append(product)
    catalog.products = products
    write_catalog(catalog, target)
    return n


def prepare_index(config: LoadConfig, workdir: Path, *, skip_build: bool, nice: int) -> Prepared:
    """Synthesise the catalogue and build both index versions, or reuse what is there.

    Raises:
        ConfigError: with ``skip_build`` when nothing (or only part) has been prepared.
    """
    home = workdir / f"p{config.products}-u{config.users}-s{config.seed}"
    catalog, changed, index = home / "catalog", home / "catalog-changed", home / "index"
    record = home / PREPARED_FILE
    if record.is_file():
        saved = json.loads(record.read_text())
        prepared = Prepared(catalog, index, saved["base_version"], saved["changed_version"])
        if all((index / v / MANIFEST_FILE).is_file() for v in saved.values()):
            _log(
                f"reusing the prepared index {index} ({prepared.base_version}, "
                f"{prepared.changed_version})"
            )
            return prepared
    if skip_build:
        raise ConfigError(
            f"--skip-build, but {home} holds no complete preparation ({record} with both "
            "versions); run once without --skip-build (or pass the same --products, --seed "
            "and --workdir as the run that prepared it)."
        )
    catalog, index, base = _ensure_base(home, config.products, config.users, config.seed, nice)
    log = home / "prepare.log"
    build = ("--device", "cpu", "--no-progress")
    versions = list_versions(index)
    target = _version_of(index, changed, versions)
    if target is None:
        if not _has_products(changed):
            _log("writing the 1%-changed catalogue")
            # Written aside and renamed, so an interrupted write is never taken as done.
            partial = home / "catalog-changed.partial"
            shutil.rmtree(partial, ignore_errors=True)
            n = _change_one_percent(catalog, partial, config.seed + 1)
            partial.replace(changed)
            _log(f"{n:,} products changed")
        _run_step(
            "building the 1%-changed version (the embedding cache holds the other 99%)",
            _cli("build-index", "--catalog", str(changed), "--out", str(index), *build, nice=nice),
            log,
        )
        target = _version_of(index, changed, list_versions(index))
        if target is None:
            raise RuntimeError(f"the changed build left no version of {changed} in {index}.")
    record.write_text(json.dumps({"base_version": base, "changed_version": target}, indent=2))
    return Prepared(catalog, index, base, target)


def _ensure_base(
    home: Path, products: int, users: int, seed: int, nice: int
) -> tuple[Path, Path, str]:
    """Synthesise ``home/catalog`` and build its first version into ``home/index`` unless
    they are there. Returns the catalogue, the index root and the base version's name."""
    catalog, index = home / "catalog", home / "index"
    home.mkdir(parents=True, exist_ok=True)
    log = home / "prepare.log"
    if not _has_products(catalog):
        # Written aside and renamed (its photo paths are relative), so an interrupted run
        # is never taken as a finished catalogue.
        partial = home / "catalog.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _run_step(
            f"synthesising {products:,} products and {users:,} users",
            _cli(
                "synth",
                *("--out", str(partial), "--products", str(products)),
                *("--users", str(users), "--seed", str(seed)),
                nice=nice,
            ),
            log,
        )
        partial.replace(catalog)
    base = _version_of(index, catalog, list_versions(index))
    if base is None:
        _run_step(
            f"building the index of {products:,} products (text ~100-200/s on 2 idle cores)",
            _cli(
                *("build-index", "--catalog", str(catalog), "--out", str(index)),
                *("--device", "cpu", "--no-progress"),
                nice=nice,
            ),
            log,
        )
        base = _version_of(index, catalog, list_versions(index))
        if base is None:
            raise RuntimeError(f"the build left no version of {catalog} in {index}; see {log}.")
    return catalog, index, base


def _version_of(index: Path, catalog: Path, versions: Sequence[Path]) -> str | None:
    """The oldest version whose manifest names ``catalog`` as its source."""
    wanted = catalog.resolve()
    for version in versions:
        source = IndexManifest.read(version / MANIFEST_FILE).catalog
        if source is not None and Path(source).resolve() == wanted:
            return version.name
    return None


def prepare_ranker(config: LoadConfig, workdir: Path, *, nice: int) -> Path:
    """The ONNX int8 shared-context student ranker, trained once under ``workdir``.

    It learns from the 2,000-product synthetic catalogue (the ``--smoke`` one, shared): the
    ranker reads product text, which the generator writes the same way at any size, and
    only its speed is measured here.
    """
    home = workdir / f"ranker-s{config.seed}"
    student = home / "student"
    if (student / "onnx" / RANKER_MANIFEST).is_file():
        _log(f"reusing the ranker {student / 'onnx'}")
        return student / "onnx"
    catalog, index, _ = _ensure_base(
        workdir / f"p2000-u300-s{config.seed}", 2000, 300, config.seed, nice
    )
    home.mkdir(parents=True, exist_ok=True)
    log, teacher = home / "prepare.log", home / "teacher"
    minutes = f"{config.ranker_minutes:g}"
    data = ("--index", str(index), "--catalog", str(catalog))
    common = ("--minutes", minutes, "--threads", "1", "--device", "cpu")
    if not (teacher / RANKER_MANIFEST).is_file():
        _run_step(
            f"ranker: fine-tuning a 2-layer MiniLM teacher (<= {minutes} min)",
            _cli(
                *("train-ranker", "--lists", "replay", *data, "--out", str(teacher)),
                *("--layers", "2", "--no-progress", *common),
                nice=nice,
            ),
            log,
        )
    _run_step(
        f"ranker: distilling a shared-context student, ONNX int8 (<= {minutes} min)",
        _cli(
            *("distill-ranker", "--teacher", str(teacher), *data, "--out", str(student)),
            *("--architecture", "shared-context", "--onnx", "int8", *common),
            nice=nice,
        ),
        log,
    )
    if not (student / "onnx" / RANKER_MANIFEST).is_file():
        raise RuntimeError(f"distill-ranker wrote no ONNX ranker in {student}; see {log}.")
    return student / "onnx"


# ----------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A ``newarrivals serve`` subprocess on a loopback port."""

    index: Path
    journal: Path
    log: Path
    port: int
    threads: int
    api_key: str
    ranker: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server has not been started.")
        return self.process.pid

    def start(self, ready_timeout: float) -> float:
        """Start the process and wait for ``/readyz``. Returns the seconds it took."""
        env = {
            **os.environ,
            "NEWARRIVALS_API_KEY": self.api_key,
            # FAISS and BLAS default to one OpenMP thread per core; with many route threads
            # searching at once that oversubscribes the cores, so they get the encoders' count.
            "OMP_NUM_THREADS": str(self.threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        if self.ranker is not None:
            env["NEWARRIVALS_RANKER"] = str(self.ranker)
        cmd = _cli(
            *("serve", "--index", str(self.index), "--journal", str(self.journal)),
            *("--port", str(self.port), "--device", "cpu", "--threads", str(self.threads)),
        )
        t0 = time.perf_counter()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with status {self.process.returncode} before it was "
                    f"ready:\n{self.tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"the server was not ready after {ready_timeout:.0f}s (raise --ready-timeout):\n"
            f"{self.tail()}"
        )

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def publish_latest(index: Path, version: str) -> None:
    """Point the index root's LATEST at ``version`` (atomically, as a build publishes)."""
    tmp = index / f".{LATEST_FILE}.load-test"
    tmp.write_text(version + "\n")
    tmp.replace(index / LATEST_FILE)


# --------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Call:
    """One HTTP request, prepared before the clock starts."""

    method: Literal["GET", "POST"]
    path: str
    params: dict[str, str] | None = None
    body: dict[str, Any] | None = None
    #: A sub-kind whose latency is also reported apart (e.g. cold-start with a photo).
    tag: str = ""


@dataclass(frozen=True)
class Workload:
    """What the requests are drawn from: known users, products, texts and small photos."""

    users: tuple[str, ...]
    products: tuple[Product, ...]
    photos: tuple[str, ...]

    @classmethod
    def from_catalog(cls, catalog: Path, seed: int, n_photos: int = 16) -> Workload:
        data = read_catalog(catalog)
        users = tuple(sorted({e.user_id for e in data.interactions}))
        if not users:
            raise ConfigError(f"{catalog} has no interactions, so there is no known user.")
        rng = random.Random(seed)
        with_photo = [p for p in data.products if p.image]
        photos = []
        for product in rng.sample(with_photo, min(n_photos, len(with_photo))):
            assert product.image is not None  # filtered above
            with Image.open(product.image) as img:
                small = img.convert("RGB").resize((64, 64))
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=85)
            photos.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return cls(users, tuple(data.products), tuple(photos))

    def calls(self, scenario: str, n: int, rng: random.Random, photo_share: float) -> list[Call]:
        base = scenario.split("+", 1)[0]
        if base in ("recommend", "rerank"):
            params = {"k": "10"} | ({"rerank": "true"} if base == "rerank" else {})
            return [
                Call("GET", f"/v1/users/{rng.choice(self.users)}/recommendations", params)
                for _ in range(n)
            ]
        if base == "similar":
            return [
                Call(
                    "GET",
                    f"/v1/products/{rng.choice(self.products).product_id}/similar",
                    {"k": "10"},
                )
                for _ in range(n)
            ]
        if base == "cold-start":
            return [self._cold_start(i, rng, photo_share) for i in range(n)]
        raise ConfigError(f"unknown scenario {scenario!r}; choose from {ALL_SCENARIOS}.")

    def _cold_start(self, i: int, rng: random.Random, photo_share: float) -> Call:
        product = rng.choice(self.products)
        # A unique title per request: nothing downstream may answer from a cache.
        body: dict[str, Any] = {
            "title": f"{product.title} (launch {i})",
            "description": product.description,
            "brand": product.brand,
            "attributes": dict(product.attributes),
            "nearest_k": 10,
            "audience_size": 10,
        }
        if product.category:
            body["category"] = " > ".join(product.category)
        if product.price is not None:
            body["price"] = product.price
        if self.photos and rng.random() < photo_share:
            body["image_base64"] = rng.choice(self.photos)
            return Call("POST", "/v1/cold-start", body=body, tag="with photo")
        return Call("POST", "/v1/cold-start", body=body, tag="text only")

    def event(self, rng: random.Random) -> dict[str, Any]:
        kind = rng.choices(("view", "cart", "purchase"), weights=(8, 1, 1))[0]
        return {
            "events": [
                {
                    "user_id": rng.choice(self.users),
                    "product_id": rng.choice(self.products).product_id,
                    "event": kind,
                }
            ]
        }


ROUTES: Final = {
    "recommend": "GET /v1/users/{id}/recommendations",
    "rerank": "GET /v1/users/{id}/recommendations?rerank=true",
    "similar": "GET /v1/products/{id}/similar",
    "cold-start": "POST /v1/cold-start",
    "recommend+events": "GET /v1/users/{id}/recommendations",
    "recommend+swap": "GET /v1/users/{id}/recommendations",
}


# ------------------------------------------------------------------------------ the driver


@dataclass
class Tally:
    """What one measured run saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    by_tag: dict[str, list[float]] = field(default_factory=dict)

    def record(self, call: Call, status: int | None, ms: float, error: str = "") -> None:
        if status is None:
            self.transport_errors[error or "unknown"] += 1
            return
        self.latencies_ms.append(ms)
        self.statuses[status] += 1
        if call.tag:
            self.by_tag.setdefault(call.tag, []).append(ms)

    def breakdown(self) -> dict[str, dict[str, float]]:
        """Requests, p50 and p99 per tag (empty when the calls carry no tags)."""
        return {
            tag: {
                "requests": len(values),
                "p50_ms": round(float(np.percentile(values, 50)), 2),
                "p99_ms": round(float(np.percentile(values, 99)), 2),
            }
            for tag, values in sorted(self.by_tag.items())
        }


@dataclass
class BackgroundReport:
    """What the scenario's background task did (events posted, or the swap)."""

    kind: Background
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    sent: int = 0
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if self.kind == "events":
            rate = self.sent / self.seconds if self.seconds else 0.0
            return (
                f"event writer: {self.sent} POST /v1/events at {rate:.1f}/s, statuses "
                f"{dict(self.statuses)}, {self.transport_errors} unanswered"
            )
        if self.kind == "swap":
            d = self.detail
            return (
                f"hot swap {d.get('previous_version')} -> {d.get('current_version')}: status "
                f"{dict(self.statuses)}, {self.seconds:.1f}s (server-side "
                f"{d.get('seconds', float('nan')):.1f}s, {d.get('replayed_entries')} journal "
                f"entries replayed); {d.get('requests_before_swap')} requests sent before it "
                f"answered, {d.get('requests_after_swap')} after"
            )
        return ""


async def _send(client: httpx.AsyncClient, call: Call, tally: Tally | None) -> None:
    t0 = time.perf_counter()
    try:
        response = await client.request(call.method, call.path, params=call.params, json=call.body)
        await response.aread()
    except httpx.HTTPError as exc:
        if tally is not None:
            tally.record(call, None, 0.0, type(exc).__name__)
        return
    if tally is not None:
        tally.record(call, response.status_code, (time.perf_counter() - t0) * 1000.0)


async def _event_writer(
    client: httpx.AsyncClient,
    workload: Workload,
    rate: float,
    rng: random.Random,
    stop: asyncio.Event,
    report: BackgroundReport,
) -> None:
    """Post one event every ``1/rate`` seconds on a fixed schedule until ``stop``."""
    loop = asyncio.get_running_loop()
    start = next_at = loop.time()
    pending: set[asyncio.Task[None]] = set()

    async def post(body: dict[str, Any]) -> None:
        try:
            response = await client.post("/v1/events", json=body)
            report.statuses[response.status_code] += 1
        except httpx.HTTPError:
            report.transport_errors += 1

    while not stop.is_set():
        task = asyncio.create_task(post(workload.event(rng)))
        pending.add(task)
        task.add_done_callback(pending.discard)
        report.sent += 1
        next_at += 1.0 / rate
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
    report.seconds = loop.time() - start
    if pending:
        await asyncio.gather(*pending)


async def _swap(
    client: httpx.AsyncClient,
    prepared: Prepared,
    target: str,
    timeout: float,
    report: BackgroundReport,
    done: asyncio.Event,
    progress: _Progress,
) -> None:
    """Publish ``target`` as LATEST and ask the server to swap to it."""
    t0 = time.perf_counter()
    try:
        publish_latest(prepared.index, target)
        response = await client.post("/v1/admin/reload", timeout=timeout)
        report.statuses[response.status_code] += 1
        if response.status_code == 200:
            report.detail.update(response.json())
        else:
            report.detail["error"] = response.text[:500]
    except httpx.HTTPError as exc:
        report.transport_errors += 1
        report.detail["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        report.seconds = time.perf_counter() - t0
        progress.at_swap = progress.sent
        done.set()


async def drive(
    base_url: str,
    api_key: str,
    calls: Sequence[Call],
    warmup: Sequence[Call],
    concurrency: int,
    background: Background,
    *,
    workload: Workload,
    prepared: Prepared,
    swap_target: str,
    config: LoadConfig,
    rng: random.Random,
) -> tuple[Tally, float, BackgroundReport]:
    """Send ``calls`` from ``concurrency`` workers; returns the tally, the wall seconds of
    the measured part and what the background task did."""
    # Spare connections for the background writes, so they never queue behind the load.
    # Idle connections are dropped after 2 s: httpx's default, 5 s, equals uvicorn's
    # keep-alive timeout, so a request sent on a connection idle for 5 s can meet the
    # server's close and fail with a ReadError that says nothing about the service.
    spare = concurrency + 8
    limits = httpx.Limits(
        max_connections=spare, max_keepalive_connections=spare, keepalive_expiry=2.0
    )
    timeout = httpx.Timeout(60.0)
    report = BackgroundReport(background)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=timeout, headers={"X-API-Key": api_key}
    ) as client:
        await _pump(client, warmup, concurrency, None, _Progress(), None)
        tally, progress = Tally(), _Progress()
        stop, swap_done = asyncio.Event(), asyncio.Event()
        side: asyncio.Task[None] | None = None
        if background == "events":
            side = asyncio.create_task(
                _event_writer(client, workload, config.event_rate, rng, stop, report)
            )
        elif background == "swap":
            side = asyncio.create_task(
                _swap(
                    client,
                    prepared,
                    swap_target,
                    config.reload_timeout,
                    report,
                    swap_done,
                    progress,
                )
            )
        extend = None
        if background == "swap":
            extend = _SwapExtension(swap_done, tail=max(1, config.requests // 10))
        t0 = time.perf_counter()
        await _pump(client, calls, concurrency, tally, progress, extend)
        wall = time.perf_counter() - t0
        stop.set()
        if side is not None:
            await side
        if progress.at_swap is not None:
            report.detail["requests_before_swap"] = progress.at_swap
            report.detail["requests_after_swap"] = progress.sent - progress.at_swap
    return tally, wall, report


@dataclass
class _Progress:
    """Requests sent so far, and how many had been sent when the swap answered."""

    sent: int = 0
    at_swap: int | None = None


@dataclass(frozen=True)
class _SwapExtension:
    """Keeps the swap scenario sending until the swap is done and ``tail`` more were sent."""

    done: asyncio.Event
    tail: int

    def finished(self, progress: _Progress, planned: int) -> bool:
        if not self.done.is_set() or progress.at_swap is None:
            return False
        return progress.sent >= max(planned, progress.at_swap + self.tail)


async def _pump(
    client: httpx.AsyncClient,
    calls: Sequence[Call],
    concurrency: int,
    tally: Tally | None,
    progress: _Progress,
    extend: _SwapExtension | None,
) -> None:
    if not calls:
        return

    async def worker() -> None:
        while True:
            if progress.sent >= len(calls) and (
                extend is None or extend.finished(progress, len(calls))
            ):
                return
            call = calls[progress.sent % len(calls)]
            progress.sent += 1
            await _send(client, call, tally)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Row:
    """One scenario at one concurrency (the JSON row ``benchmarks/report.py`` reads)."""

    scenario: str
    route: str
    concurrency: int
    requests: int
    p50_ms: float
    p99_ms: float
    rps: float
    errors_5xx: int
    errors_4xx: int
    unanswered: int
    client_cpu: float
    server_cpu: float | None
    load_1m: float
    target: str
    verdict: str
    background: str
    breakdown: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "route": self.route,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "rps": self.rps,
            "errors_5xx": self.errors_5xx,
            "errors_other_non_2xx": self.errors_4xx,
            "unanswered": self.unanswered,
            "client_cpu_cores": self.client_cpu,
            "server_cpu_cores": self.server_cpu,
            "load_average_1m": self.load_1m,
            "target": self.target,
            "verdict": self.verdict,
            "background": self.background,
            "breakdown": self.breakdown,
        }


def _row(
    scenario: str,
    concurrency: int,
    tally: Tally,
    wall: float,
    client_cpu: float,
    server_cpu: float | None,
    background: BackgroundReport,
) -> Row:
    answered = len(tally.latencies_ms)
    lat = np.asarray(tally.latencies_ms, dtype=np.float64)
    p50 = float(np.percentile(lat, 50)) if answered else float("nan")
    p99 = float(np.percentile(lat, 99)) if answered else float("nan")
    errors_5xx = sum(n for s, n in tally.statuses.items() if s >= 500)
    other = sum(n for s, n in tally.statuses.items() if not 200 <= s < 300 and s < 500)
    bound = P99_TARGETS_MS.get((scenario, concurrency))
    if bound is not None:
        target = f"p99 < {bound:g} ms"
        verdict = "PASS" if answered and p99 < bound and errors_5xx == 0 else "MISS"
    elif scenario == "rerank" and concurrency == 8:
        target, verdict = "report req/s (CPU-bound)", "-"
    else:
        target, verdict = "-", "-"
    return Row(
        scenario=scenario,
        route=ROUTES[scenario],
        concurrency=concurrency,
        requests=answered + sum(tally.transport_errors.values()),
        p50_ms=round(p50, 2),
        p99_ms=round(p99, 2),
        rps=round(answered / wall, 1) if wall > 0 else 0.0,
        errors_5xx=errors_5xx,
        errors_4xx=other,
        unanswered=sum(tally.transport_errors.values()),
        client_cpu=round(client_cpu / wall, 2) if wall > 0 else 0.0,
        server_cpu=round(server_cpu / wall, 2) if server_cpu is not None and wall > 0 else None,
        load_1m=round(os.getloadavg()[0], 2),
        target=target,
        verdict=verdict,
        background=background.summary(),
        breakdown=tally.breakdown(),
    )


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| scenario | route | conc. | requests | p50 ms | p99 ms | req/s | 5xx | other non-2xx "
        "| no answer | client CPU | server CPU | load 1m | target | |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        server = f"{r.server_cpu:.2f}" if r.server_cpu is not None else "n/a"
        errors = f"**{r.errors_5xx}**" if r.errors_5xx else "0"
        lines.append(
            f"| {r.scenario} | `{r.route}` | {r.concurrency} | {r.requests:,} | {r.p50_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.rps:.1f} | {errors} | {r.errors_4xx} | {r.unanswered} "
            f"| {r.client_cpu:.2f} | {server} | {r.load_1m:.1f} | {r.target} | {r.verdict} |"
        )
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _header(
    config: LoadConfig,
    server: Server,
    version: dict[str, Any],
    ready_s: float,
    ranker_kind: str | None,
) -> str:
    cores = os.cpu_count() or 0
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    manifest = version.get("manifest") or {}
    encoders = manifest.get("encoders") or {}
    text = (encoders.get("text") or {}).get("model", "none")
    image = (encoders.get("image") or {}).get("model", "none")
    return "\n".join(
        [
            "# API load test (issue #5)",
            "",
            f"- machine: {cores} cores ({_cpu_model()}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; load average at "
            f"start {load}",
            f"- client: this process (asyncio + httpx, one connection per worker) on the "
            f"same {cores} cores as the server, so client and server share the CPU (its use "
            "is the 'client CPU' column, in cores)",
            f"- server: `newarrivals serve` (pid {server.pid}), one uvicorn process; "
            f"`--threads {server.threads}` (ONNX Runtime / torch intra-op), "
            f"OMP_NUM_THREADS={server.threads}, sync routes on anyio's default "
            f"{ROUTE_THREADS}-thread pool; encoder and ranker calls run one at a time",
            f"- index: {version.get('version')} with {version.get('products', '?'):,} products, "
            f"{version.get('users', '?'):,} users; text {text}, image {image}; ready "
            f"{ready_s:.0f}s after start",
            f"- ranker: {ranker_kind or 'none'}"
            + (f" at {server.ranker}" if server.ranker else "")
            + "; re-ranking scores the server's NEWARRIVALS_RERANK_DEPTH (default 50) "
            "candidates",
            f"- load: {config.requests:,} measured requests per row after {config.warmup} "
            f"warm-up ones, concurrency {', '.join(map(str, config.concurrency))}; events at "
            f"{config.event_rate:g}/s; {config.photo_share:.0%} of cold-start lookups carry a "
            "64x64 JPEG",
        ]
    )


# ------------------------------------------------------------------------------------- main


def _parse_levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--concurrency must be comma-separated integers, e.g. 1,8,32; got {text!r}"
        ) from None


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--products", type=int, default=None, help="catalogue size (100,000)")
    parser.add_argument("--requests", type=int, default=None, help="per row (5,000)")
    parser.add_argument("--concurrency", type=_parse_levels, default=(1, 8, 32))
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured, per row (100)")
    parser.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/newarrivals-load"))
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON")
    parser.add_argument("--skip-build", action="store_true", help="reuse; fail if unprepared")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--ranker", type=Path, default=None, help="existing ranker artifact")
    parser.add_argument("--ranker-minutes", type=float, default=3.0, help="per training step")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--event-rate", type=float, default=20.0, help="events/s")
    parser.add_argument("--photo-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--reload-timeout", type=float, default=900.0)
    parser.add_argument("--nice", type=int, default=0, help="niceness of the preparation")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="check the plumbing: 2,000 products, 200 requests, 20 warm-up (flags win)",
    )
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> LoadConfig:
    smoke = {"products": 2_000, "requests": 200, "warmup": 20} if args.smoke else {}
    sizes = {
        name: getattr(args, name) if getattr(args, name) is not None else smoke.get(name, default)
        for name, default in (("products", 100_000), ("requests", 5_000), ("warmup", 100))
    }
    return LoadConfig(
        **sizes,
        concurrency=tuple(args.concurrency),
        seed=args.seed,
        scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()),
        event_rate=args.event_rate,
        photo_share=args.photo_share,
        server_threads=args.server_threads,
        ready_timeout=args.ready_timeout,
        reload_timeout=args.reload_timeout,
        ranker_minutes=args.ranker_minutes,
    )


def run(config: LoadConfig, args: argparse.Namespace) -> list[Row]:
    """Prepare, serve, drive every scenario at every concurrency; print and return the rows."""
    workdir: Path = args.workdir.resolve()
    prepared = prepare_index(config, workdir, skip_build=args.skip_build, nice=args.nice)
    ranker: Path | None = args.ranker
    if ranker is None and config.needs_ranker:
        ranker = prepare_ranker(config, workdir, nice=args.nice)
    ranker_kind = None
    if ranker is not None:
        manifest = ranker / RANKER_MANIFEST
        if not manifest.is_file():
            raise ConfigError(
                f"--ranker {ranker} holds no {RANKER_MANIFEST}; pass a ranker "
                "artifact (train-ranker or distill-ranker output)."
            )
        ranker_kind = str(json.loads(manifest.read_text()).get("kind", "?"))
    _log("reading the catalogue for the request mix")
    workload = Workload.from_catalog(prepared.catalog, config.seed)

    run_dir = workdir / "runs" / time.strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    # Serve the base version with an empty journal, so every run starts from the same state.
    publish_latest(prepared.index, prepared.base_version)
    server = Server(
        index=prepared.index,
        journal=run_dir / "journal.sqlite",
        log=run_dir / "server.log",
        port=args.port or free_port(),
        threads=config.server_threads,
        api_key=secrets.token_urlsafe(32),
        ranker=ranker,
    )
    _log(f"starting the server on port {server.port} (log: {server.log})")
    rows: list[Row] = []
    try:
        ready_s = server.start(config.ready_timeout)
        version = httpx.get(
            f"{server.base_url}/v1/admin/version",
            headers={"X-API-Key": server.api_key},
            timeout=30,
        ).json()
        print(_header(config, server, version, ready_s, ranker_kind), flush=True)
        served = prepared.base_version
        rng = random.Random(config.seed)
        for scenario in config.scenarios:
            background: Background = (
                "events"
                if scenario.endswith("+events")
                else "swap"
                if scenario.endswith("+swap")
                else "none"
            )
            for level in config.concurrency:
                calls = workload.calls(scenario, config.requests, rng, config.photo_share)
                warm = workload.calls(scenario, config.warmup, rng, config.photo_share)
                target = (
                    prepared.changed_version
                    if served == prepared.base_version
                    else prepared.base_version
                )
                _log(f"{scenario} at concurrency {level}: {len(calls):,} requests")
                cpu0, srv0 = time.process_time(), _cpu_seconds(server.pid)
                tally, wall, report = asyncio.run(
                    drive(
                        server.base_url,
                        server.api_key,
                        calls,
                        warm,
                        level,
                        background,
                        workload=workload,
                        prepared=prepared,
                        swap_target=target,
                        config=config,
                        rng=rng,
                    )
                )
                srv1 = _cpu_seconds(server.pid)
                server_cpu = srv1 - srv0 if srv0 is not None and srv1 is not None else None
                row = _row(
                    scenario, level, tally, wall, time.process_time() - cpu0, server_cpu, report
                )
                rows.append(row)
                if background == "swap" and report.statuses.get(200):
                    served = str(report.detail.get("current_version", served))
                if tally.transport_errors:
                    _log(f"  unanswered: {dict(tally.transport_errors)}")
                _log(
                    f"  p50 {row.p50_ms:.1f} ms, p99 {row.p99_ms:.1f} ms, {row.rps:.1f} req/s, "
                    f"statuses {dict(tally.statuses)}"
                    + (f"; {row.background}" if row.background else "")
                )
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError(f"the server died during {scenario}:\n{server.tail()}")
    finally:
        server.stop()
        publish_latest(prepared.index, prepared.base_version)
    print()
    print(markdown(rows))
    print()
    for r in rows:
        if r.background:
            print(f"- {r.scenario}, concurrency {r.concurrency}: {r.background}")
        if r.breakdown:
            parts = [
                f"{tag}: {int(b['requests'])} requests, p50 {b['p50_ms']:.1f} ms, "
                f"p99 {b['p99_ms']:.1f} ms"
                for tag, b in r.breakdown.items()
            ]
            print(f"- {r.scenario}, concurrency {r.concurrency}: {'; '.join(parts)}")
    print(
        f"- load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"client and server share the machine's {os.cpu_count()} cores. Re-ranking is "
        "CPU-bound: the server runs one ranker forward pass at a time, so its req/s is about "
        "1 / (forward-pass time) whatever the concurrency, and more cores raise it only "
        "through --server-threads (intra-op threads) or more server processes"
    )
    print(f"- server log and journal: {run_dir}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        _log(f"wrote {args.json}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        config = _config(args)
        rows = run(config, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in rows if r.errors_5xx or r.unanswered]
    if failed:
        names = ", ".join(f"{r.scenario}@{r.concurrency}" for r in failed)
        print(f"FAIL: 5xx or unanswered requests in {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
