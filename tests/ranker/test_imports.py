"""Serving imports no training code: the API app and the ranker's top level stay light."""

from __future__ import annotations

import json
import subprocess
import sys

TRAINING_PREFIXES = ("newarrivals.ranker.training", "newarrivals.ranker.two_stage")


def test_importing_the_api_loads_no_ranker_training_module() -> None:
    # A fresh interpreter: this test session has imported training modules already.
    code = (
        "import json, sys\n"
        "import newarrivals.service.api, newarrivals.ranker\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('newarrivals.'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "newarrivals.ranker.loading" in loaded
    assert [m for m in loaded if m.startswith(TRAINING_PREFIXES)] == []
