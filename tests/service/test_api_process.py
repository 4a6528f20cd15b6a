"""``newarrivals serve`` as a real process: SIGKILL it mid-stream, restart, lose nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

KEY = "process-test-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(index: Path, journal: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NEWARRIVALS_API_KEY": KEY,
        "NEWARRIVALS_VERIFY_INDEX": "false",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        *(sys.executable, "-m", "newarrivals.service.cli", "serve"),
        *("--index", str(index), "--journal", str(journal), "--port", str(port)),
        *("--device", "cpu", "--threads", "1"),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready after 120 s:\n{log.read_text()[-3000:]}")


def test_sigkill_mid_stream_loses_no_acknowledged_write(
    private_index: Path, tmp_path: Path
) -> None:
    journal, log = tmp_path / "journal.sqlite", tmp_path / "server.log"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(private_index, journal, port, log)
    try:
        _wait_ready(base, proc, log)
        acked_events: dict[str, int] = {}
        acked_products: dict[str, str] = {}
        acked_deletes: set[str] = set()
        lock = threading.Lock()
        killed = threading.Event()
        headers = {"X-API-Key": KEY}

        def write(i: int) -> None:
            if killed.is_set():
                return
            try:
                with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
                    if i % 3 == 0:
                        title = f"Kill-test jacket {i}"
                        r = http.put(f"/v1/products/K{i}", json={"title": title})
                        if r.status_code == 200:
                            with lock:
                                acked_products[f"K{i}"] = title
                    elif i % 10 == 1 and i > 10:
                        pid = f"P{i:06d}"
                        if http.delete(f"/v1/products/{pid}").status_code == 200:
                            with lock:
                                acked_deletes.add(pid)
                    else:
                        user = f"kill-{i % 17}"
                        event = {"user_id": user, "product_id": "P000002", "event": "view"}
                        r = http.post("/v1/events", json={"events": [event]})
                        if r.status_code == 200:
                            with lock:
                                acked_events[user] = acked_events.get(user, 0) + 1
            except httpx.TransportError:
                pass  # in flight when the process died: not acknowledged

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(write, i) for i in range(400)]
            while sum(acked_events.values()) + len(acked_products) < 60:
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            killed.set()
            for f in futures:
                f.result()
        proc.wait(10)
        assert acked_products and acked_events and acked_deletes

        proc = _start(private_index, journal, port, log)
        _wait_ready(base, proc, log)
        with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
            for pid, title in acked_products.items():
                r = http.get(f"/v1/products/{pid}")
                assert r.status_code == 200 and r.json()["title"] == title, pid
            for pid in acked_deletes:
                assert http.get(f"/v1/products/{pid}").status_code == 404, pid
            for user, count in acked_events.items():
                held = http.get(f"/v1/users/{user}").json()["events"]
                # Every acknowledged event is there; one more may have been journaled
                # by a request that died before its answer was sent.
                assert count <= held, (user, count, held)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
