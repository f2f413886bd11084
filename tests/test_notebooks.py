"""The notebooks run top to bottom (on the real sample when present, else on synthetic data) and draw pictures."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = ["01_data_and_tree", "02_augmentations", "03_results"]


@pytest.mark.slow  # about 25 s each on 2 cores
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("GZOO_NOTEBOOK_DIR", str(tmp_path))  # the kernel inherits the environment
    monkeypatch.delenv("GZOO_CKPT", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models gain nothing from a 2nd thread, and on a busy CPU it stalls them
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()  # raises on a failing cell
    pictures = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == NOTEBOOKS
