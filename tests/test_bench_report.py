"""benchmarks/report.py turns benchmark JSON into REPORT.md plus PNG charts.

The rows here are made up for the test (distinctive numbers, so the test can find them in
the Markdown); they check the report code, not any benchmark's figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("report.py")


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


MACHINE = {
    "recorded_at": "2031-02-03T04:05:06+00:00",
    "cpu": "Test CPU Model 9000",
    "cores": 7,
    "usable_cores": 5,
    "ram_gib": 12.5,
    "gpus": [],
    "os": "Linux-test",
    "python": "3.11.9",
    "libraries": {"faiss-cpu": "1.15.1", "torch": "2.14.1"},
}
FAISS = {
    "args": {"n": "200000", "dim": "384", "queries": "500", "threads": "2"},
    "faiss": "1.15.1",
    "rows": [
        {
            "index": "Flat",
            "params": "exact",
            "build_s": 0.4,
            "size_mb": 293.0,
            "single_qps": 31.0,
            "batch_qps": 88.0,
            "recall_at_10": 1.0,
            "queries_used": 500,
        },
        {
            "index": "IVF2048,Flat",
            "params": "nprobe=16",
            "build_s": 12.5,
            "size_mb": 296.0,
            "single_qps": 1234.0,
            "batch_qps": 4321.0,
            "recall_at_10": 0.871,
            "queries_used": 500,
        },
        {
            "index": "IVF2048,Flat",
            "params": "nprobe=64",
            "build_s": 12.5,
            "size_mb": 296.0,
            "single_qps": 402.0,
            "batch_qps": 977.0,
            "recall_at_10": 0.943,
            "queries_used": 448,
        },
    ],
}
LOAD = [
    {
        "scenario": "steady",
        "route": "/v1/recommendations",
        "concurrency": 8,
        "requests": 4000,
        "p50_ms": 12.3,
        "p99_ms": 45.6,
        "rps": 456.7,
        "errors_5xx": 0,
    },
    {
        "scenario": "steady",
        "route": "/v1/similar",
        "concurrency": 8,
        "requests": 4000,
        "p50_ms": 7.8,
        "p99_ms": 31.4,
        "rps": 612.9,
        "errors_5xx": 3,
    },
]
RANKER = [
    {"variant": "distilled-2L", "candidates": 50, "p50_ms": 21.7, "p99_ms": 38.2, "ndcg20": 0.3141},
    {"variant": "minilm-6L", "candidates": 50, "p50_ms": 654.3, "p99_ms": 812.9, "ndcg20": None},
]
REBUILD = {
    "products": 1000,
    "users": 200,
    "changed": 10,
    "rows": [
        {
            "run": "full rebuild (empty cache)",
            "wall_s": 40.0,
            "build_s": 35.5,
            "text_encoded": 990,
            "image_encoded": 950,
        },
        {
            "run": "rebuild, 1% changed (10 products)",
            "wall_s": 3.0,
            "build_s": 1.25,
            "text_encoded": 10,
            "image_encoded": 9,
        },
    ],
    "stages": {"text": {"items": 990, "seconds": 9.9}, "image": {"items": 950, "seconds": 1.9}},
}
EVALUATION = {
    "dataset": "synth-test",
    "methods": {
        "random": {"recall@20": 0.0351, "ndcg@20": 0.0119, "hitrate@20": 0.1},
        "text / mean user vector": {"recall@20": 0.2061, "ndcg@20": 0.1003, "hitrate@20": 0.4},
    },
    "stderr": {
        "random": {"recall@20": 0.004, "ndcg@20": 0.002},
        "text / mean user vector": {"recall@20": 0.011, "ndcg@20": 0.006},
    },
    "kinds": {"random": "baseline", "text / mean user vector": "content"},
    "n_test_users": 269,
    "n_cold_items": 593,
    "split": {"cutoff": "2024-03-31T00:00:00+00:00"},
    "best_method": "text / mean user vector",
    "margins": [
        {
            "metric": "recall@20",
            "method": "text / mean user vector",
            "baseline": "random",
            "margin": 0.171,
            "stderr": 0.012,
        }
    ],
}
TOWER = {
    "architecture": "vit-micro",
    "image_size": 64,
    "train_seconds": 180.0,
    "n_valid": 300,
    "n_test": 593,
    "valid_trained": {"R@1": 0.456, "R@10": 0.987},
    "valid_untrained": {"R@1": 0.003, "R@10": 0.027},
    "test_trained": {"R@1": 0.321, "R@10": 0.983},
    "test_untrained": {"R@1": 0.002, "R@10": 0.021},
}


def _full_inputs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "machine.json", MACHINE)
    _write(root / "faiss.json", FAISS)
    _write(root / "load_test.json", LOAD)
    _write(root / "ranker_latency.json", RANKER)
    _write(root / "rebuild.json", REBUILD)
    _write(root / "evaluation.json", EVALUATION)
    _write(root / "image_tower_synth.json", TOWER)
    return root


def test_report_has_every_section_its_figures_and_charts(
    report: ModuleType, tmp_path: Path
) -> None:
    inputs = _full_inputs(tmp_path / "in")
    out = tmp_path / "out" / "REPORT.md"
    assert report.main(["--in", str(inputs), "--out", str(out)]) == 0
    md = out.read_text(encoding="utf-8")

    # The machine is the one recorded when the benchmarks ran, not the one writing this.
    assert "Test CPU Model 9000, 7 cores (5 usable" in md
    assert "RAM: 12.5 GiB" in md and "GPU: none" in md and "2031-02-03T04:05:06" in md
    assert "faiss-cpu 1.15.1" in md
    assert "(not measured)" not in md
    # FAISS rows
    assert "| IVF2048,Flat | nprobe=16 | 12.5 | 296 | 1,234 | 4,321 | 0.871 | 500 |" in md
    assert "| IVF2048,Flat | nprobe=64 | 12.5 | 296 | 402 | 977 | 0.943 | 448 |" in md
    assert "200,000 x 384" in md
    # load test, 5xx errors stand out
    assert "| steady | `/v1/recommendations` | 8 | 4,000 | 12.3 | 45.6 | 456.7 | 0 |" in md
    assert "| steady | `/v1/similar` | 8 | 4,000 | 7.8 | 31.4 | 612.9 | **3** |" in md
    # ranker, a missing NDCG shown as a dash
    assert "| distilled-2L | 50 | 21.7 | 38.2 | 0.3141 |" in md
    assert "| minilm-6L | 50 | 654.3 | 812.9 | – |" in md
    # rebuild: share of the full rebuild, and stage throughput
    assert "| rebuild, 1% changed (10 products) | 3.0 | 1.2 | 7.5% | 10 | 9 |" in md
    assert "| text | 990 | 9.90 | 100 |" in md and "| image | 950 | 1.90 | 500 |" in md
    # cold-start quality and the margin
    assert "| text / mean user vector | content | 0.2061 | 0.0110 | 0.1003 | 0.0060 |" in md
    assert "on recall@20: +0.1710 (paired s.e. 0.0120)" in md
    assert "269 test users, 593 cold items" in md
    # image tower
    assert (
        "| synthetic catalogue | vit-micro @ 64 px | 3.0 | cold items | 593 | 0.321 | 0.983" in md
    )

    charts = {
        "faiss_recall_qps.png",
        "api_latency.png",
        "ranker_latency.png",
        "rebuild.png",
        "coldstart.png",
    }
    for name in charts:
        png = out.parent / name
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        assert png.stat().st_size > 5_000, name  # a drawn chart, not an empty canvas
        assert f"]({name})" in md, name


def test_missing_inputs_are_named_with_the_command_that_makes_them(
    report: ModuleType, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    _write(inputs / "faiss.json", FAISS)
    out = inputs / "REPORT.md"
    assert report.main(["--in", str(inputs)]) == 0  # --out defaults to <in>/REPORT.md
    md = out.read_text(encoding="utf-8")
    assert "Not measured: `load_test.json` is absent" in md
    assert "benchmarks/load_test.py --json" in md
    assert "Not measured: `ranker_latency.json` is absent" in md
    assert "benchmarks/ranker_latency.py --json" in md
    assert "Not measured: `evaluation.json` is absent" in md
    assert "- API latency per route (not measured)" in md
    # No machine.json: the report says it describes the machine that wrote it.
    assert "may not be the one that measured" in md
    assert (inputs / "faiss_recall_qps.png").is_file()
    assert not (inputs / "api_latency.png").exists()


def test_record_machine_describes_this_machine(report: ModuleType, tmp_path: Path) -> None:
    assert report.main(["--in", str(tmp_path), "--record-machine"]) == 0
    info = json.loads((tmp_path / "machine.json").read_text())
    assert info["cores"] >= 1 and info["usable_cores"] >= 1
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert "numpy" in info["libraries"]
    assert isinstance(info["gpus"], list)


def test_bad_row_names_file_row_and_field(
    report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = _full_inputs(tmp_path / "in")
    bad = [dict(LOAD[0]), {k: v for k, v in LOAD[1].items() if k != "p99_ms"}]
    _write(inputs / "load_test.json", bad)
    assert report.main(["--in", str(inputs)]) == 2
    err = capsys.readouterr().err
    assert "load_test.json: row 1 lacks 'p99_ms'" in err

    _write(inputs / "load_test.json", [{**LOAD[0], "p50_ms": "fast"}])
    assert report.main(["--in", str(inputs)]) == 2
    assert "row 0 field 'p50_ms' is 'fast'; expected int or float" in capsys.readouterr().err


def test_no_results_at_all_is_an_error(
    report: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main(["--in", str(tmp_path)]) == 2
    assert "no benchmark result in" in capsys.readouterr().err
    assert not (tmp_path / "REPORT.md").exists()


def test_ranker_rows_nesting_latency_per_candidate_count_are_expanded(
    report: ModuleType, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    nested = {
        "rows": [
            {
                "variant": "student",
                "runtime": "onnx-int8",
                "threads": 1,
                "latency": {
                    "20": {"requests": 40, "p50_ms": 11.1, "p99_ms": 19.9},
                    "50": {"requests": 40, "p50_ms": 23.4, "p99_ms": 41.2},
                },
                "quality": {"ndcg@20": 0.2718, "ece_top1": 0.05},
            },
            {
                "variant": "teacher-6L",
                "runtime": "torch",
                "threads": 2,
                "latency": {"50": {"requests": 10, "p50_ms": 333.3, "p99_ms": 444.4}},
                "quality": {"ndcg@20": None, "ece_top1": None},
            },
        ],
        "meta": {"seconds": 12.0},
    }
    _write(inputs / "ranker_latency.json", nested)
    assert report.main(["--in", str(inputs)]) == 0
    md = (inputs / "REPORT.md").read_text(encoding="utf-8")
    assert "| student · onnx-int8 · 1 thread | 20 | 11.1 | 19.9 | 0.2718 |" in md
    assert "| student · onnx-int8 · 1 thread | 50 | 23.4 | 41.2 | 0.2718 |" in md
    assert "| teacher-6L · torch · 2 threads | 50 | 333.3 | 444.4 | – |" in md
    assert (inputs / "ranker_latency.png").read_bytes()[:8] == PNG_MAGIC

    nested["rows"][0]["latency"]["50"] = {"requests": 40, "p50_ms": 23.4}  # type: ignore[index]
    _write(inputs / "ranker_latency.json", nested)
    assert report.main(["--in", str(inputs)]) == 2
