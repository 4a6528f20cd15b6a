"""The quickstart notebook runs top to bottom (small parameters) and shows what it promises.

The notebook is committed without outputs; this test executes it with nbclient in a kernel
that runs *this* interpreter (a kernelspec written to a temporary folder), so it sees the
same installed ``newarrivals`` as the test process on a fresh clone after ``make install``.
The kernel talks to the test over loopback ZMQ sockets only; it runs offline
(``HF_HUB_OFFLINE``), like the rest of the suite.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "newarrivals-test"
SMALL = {
    "N_PRODUCTS": 150,
    "N_USERS": 60,
    "K": 4,
    "IMAGE_TOWER_MINUTES": 0.05,
    "EVAL_SEEDS": 1,
}


def _read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]


def _kernel_manager(root: Path) -> Any:
    """A kernel manager whose only kernelspec runs ``sys.executable`` offline."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "newarrivals (test)",
        "language": "python",
        "env": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(root / "kernels")], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def _with_parameters(nb: Any, values: dict[str, Any]) -> Any:
    """Insert an overriding cell right after the cell tagged ``parameters``."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise AssertionError(f"expected one cell tagged 'parameters', found {len(tagged)}")
    lines = [f"{name} = {value!r}" for name, value in values.items()]
    # Which interpreter the kernel runs, for the test to check.
    lines.append('print("kernel interpreter:", __import__("sys").executable)')
    source = "\n".join(lines)
    cell = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)
    return nb


def _outputs(nb: Any) -> tuple[str, list[str]]:
    """All stream text, and the MIME types of every rich output, in cell order."""
    text: list[str] = []
    mimes: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                mimes.extend(out.data.keys())
    return "".join(text), mimes


def test_committed_without_outputs() -> None:
    nb = _read(NOTEBOOK)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "commit the notebook with its outputs cleared; the test suite executes it"
    )


def test_quickstart_runs_top_to_bottom(tmp_path: Path) -> None:
    from nbclient import NotebookClient

    work = tmp_path / "work"
    nb = _with_parameters(_read(NOTEBOOK), {**SMALL, "WORKDIR": str(work)})
    client = NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=300,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    text, mimes = _outputs(nb)
    assert f"kernel interpreter: {sys.executable}\n" in text
    # Three figures: the cold-start lookup, the shopper's photos, the evaluation bars.
    assert mimes.count("image/png") >= 3, f"expected 3 figures, got outputs {mimes}"

    catalog_ids = {
        json.loads(line)["product_id"]
        for line in (work / "catalog" / "products.jsonl").read_text().splitlines()
    }
    assert len(catalog_ids) == SMALL["N_PRODUCTS"]
    assert "nearest catalogue products to NEW-0001" in text
    ranked = re.findall(r"^\s+\d+\. (\S+)\s+score (-?[\d.]+)", text, flags=re.M)
    assert len(ranked) == SMALL["K"], text
    assert {pid for pid, _ in ranked} <= catalog_ids
    scores = [float(s) for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert re.search(r"user U\d+: \d+ events before the cutoff", text)

    assert (work / "index" / "LATEST").is_file()
    reports = list((work / "reports").glob("evaluation-*.json"))
    assert len(reports) == 1, reports
    report = json.loads(reports[0].read_text())
    kinds = report["kinds"]
    assert [m for m, k in kinds.items() if k == "baseline"], kinds
    # The image tower was trained, so the photo and fused rows ran next to the text rows.
    for method in ("text / mean user vector", "image / mean user vector"):
        assert method in report["methods"], sorted(report["methods"])
        assert 0.0 <= report["methods"][method]["recall@20"] <= 1.0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_parameters_cell_defines_what_the_test_overrides(name: str) -> None:
    nb = _read(NOTEBOOK)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assert re.search(rf"^{name} = ", params.source, flags=re.M), params.source
