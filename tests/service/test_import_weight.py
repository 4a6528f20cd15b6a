"""Serving imports no training or dataset-generation code.

Creating the app (without loading an index) runs in a fresh interpreter, so modules that
other tests imported do not count; the test names every training module it finds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Modules of training, evaluation or dataset generation, which no request needs. Each name
# also covers every module whose name starts with it (sub-modules, ``training_loop``).
FORBIDDEN = (
    "newarrivals.ranker.trainer",
    "newarrivals.ranker.distill",
    "newarrivals.ranker.training",
    "newarrivals.ranker.evaluation",
    "newarrivals.ranker.two_stage",
    "newarrivals.ranker.rerank_evaluation",
    "newarrivals.indexer.catalog.synth",
    "newarrivals.indexer.evaluation",
    "newarrivals.indexer.towers.image",
    "newarrivals.indexer.towers.training",
    "newarrivals.indexer.towers.user_training",
    "newarrivals.indexer.towers.user_pipeline",
)

_PROBE = """
import json, sys
from pathlib import Path

import newarrivals.service.api
from newarrivals.service.api import ServeSettings, create_app

create_app(ServeSettings(index=Path(sys.argv[1]), api_key="k" * 24, device="cpu"))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("newarrivals"))))
"""


def _is_forbidden(module: str) -> bool:
    return any(module.startswith(prefix) for prefix in FORBIDDEN)


def test_creating_the_app_loads_no_training_module(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(index)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    offenders = [m for m in loaded if _is_forbidden(m)]
    assert not offenders, (
        f"importing newarrivals.service.api and creating the app loaded {len(offenders)} "
        f"training or dataset-generation modules: {', '.join(offenders)}"
    )
