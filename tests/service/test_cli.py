"""The main job end to end through the command line: demo, recommend (with fallback), info."""

from __future__ import annotations

from pathlib import Path

import pytest

from newarrivals.service.cli import main


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    args = ["demo", "--workdir", str(workdir), "--products", "200", "--users", "40"]
    assert main([*args, "--device", "cpu"]) == 0
    return workdir


def test_demo_builds_an_index_and_recommends(
    demo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fixture's output was captured before this test; run again to see a re-run reuse it.
    args = ["demo", "--workdir", str(demo_dir), "--products", "200", "--users", "40"]
    assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "reusing the synthetic catalogue" in out
    assert "cached" in out and "new arrivals only" in out
    assert out.count("score ") >= 10  # recommendations were printed


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
