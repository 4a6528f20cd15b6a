"""The main job end to end through the command line: demo, recommend (with fallback), info,
train-users."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newarrivals.service.cli import main

DEMO = [
    *("demo", "--products", "200", "--users", "40", "--device", "cpu", "--no-serve"),
    *("--tower-minutes", "0.05", "--ranker-minutes", "0.1", "--user-tower-minutes", "0.05"),
    *("--eval-seeds", "1"),
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    assert main([*DEMO, "--workdir", str(workdir)]) == 0
    return workdir


def test_demo_prepares_every_piece_and_a_rerun_reuses_them(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (demo_dir / "towers" / "image" / "open_clip_model.safetensors").is_file()
    assert (demo_dir / "ranker" / "ranker.json").is_file()
    assert (demo_dir / "index" / "LATEST").is_file()
    # The served student carries a blend fitted for the index's own first stage.
    blend = json.loads((demo_dir / "ranker" / "onnx" / "blend.json").read_text())
    assert blend["retrieval"] == "fused-concat/mean" and "text" in blend["features"]
    key = (demo_dir / "api_key").read_text().strip()
    assert len(key) >= 24 and (demo_dir / "api_key").stat().st_mode & 0o077 == 0
    # The fixture's output was captured before this test; run again to see a re-run reuse it.
    assert main([*DEMO, "--workdir", str(demo_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing the previous run's") == 5
    assert "best method vs best baseline" in out and "text / mean user vector" in out
    assert "(all reused)" in out


def test_recommend_flags_the_cold_user_fallback(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = next(demo_dir.glob("catalog-*"))
    index = demo_dir / "index"
    assert main(["recommend", "--index", str(index), "--catalog", str(catalog),
                 "--user", "U00001", "--user", "nobody-ever", "--k", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    warm, cold = out.split("user nobody-ever")
    assert "(fallback)" not in warm and warm.count("\n  ") >= 3
    assert "(fallback) cold user" in cold


def test_bad_flag_values_name_the_fix(demo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = next(demo_dir.glob("catalog-*"))
    code = main(["recommend", "--index", str(demo_dir / "index"), "--catalog", str(catalog),
                 "--user", "U00001", "--launched-after", "yesterday"])  # fmt: skip
    assert code == 2
    assert "--launched-after must be an ISO date like 2020-06-22, got 'yesterday'" in (
        capsys.readouterr().err
    )
    assert main(["info", "--index", str(demo_dir / "empty")]) == 2


def test_train_users_writes_a_tower_for_the_index(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = next(demo_dir.glob("catalog-*"))
    out = tmp_path / "users"
    assert main(["train-users", "--index", str(demo_dir / "index"), "--catalog", str(catalog),
                 "--out", str(out), "--epochs", "1", "--before", "2100-01-01",
                 "--device", "cpu"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["artifact"] == str(out) and printed["index"]
    assert "history" not in printed and any(out.iterdir())
