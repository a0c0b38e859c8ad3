"""The notebooks of `notebooks/` run headless (nbclient, kernel `python3`) at their tiny setting.

Each notebook runs in a fresh kernel with its working directory in a temporary folder,
`NOTEBOOK_TINY=1`, and `NOTEBOOK_DATA_DIR` naming the tiny embedded datasets, built once for the
session (the kernels inherit this process's environment). The kernel sees one CPU device (this
session's conftest simulates 8) and compiles with XLA's backend optimisation off: the notebooks
train for 2 steps, where compiling dominates and optimised code never pays back (a tiny Odin run
with its evaluations: 75 s -> 31 s). A failing cell fails the test with that cell's source and
traceback. All four take about 140 s on 2 cores.
"""

from __future__ import annotations

import os
import re

import pytest

from tests import helpers

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = os.path.join(helpers.REPO, "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb"))
CELL_TIMEOUT = 300  # seconds per cell
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="session")
def notebook_data_dir(data_dir):
    """The session's tiny scenes (test_train's fixture) plus the tiny videos, in one data_dir."""
    from common.data import loading

    loading.ensure_dataset(helpers.tiny_config("vito", data_dir, **{
        "data.name": "synthetic_videos/tiny"}).data)  # fmt: skip
    return data_dir


def test_four_notebooks_stored_clean_with_the_colab_cell_first():
    assert NOTEBOOKS == [
        "01_fh_masks_and_views.ipynb",
        "02_kmeans_segments.ipynb",
        "03_odin_discovery_over_training.ipynb",
        "04_vito_attention.ipynb",
    ]
    for name in NOTEBOOKS:
        nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert '"google.colab" in sys.modules' in code[0].source, name
        assert "%pip install" in code[0].source, name
        assert 'os.environ.get("NOTEBOOK_TINY")' in code[1].source, name


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, notebook_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_TINY", "1")
    monkeypatch.setenv("NOTEBOOK_DATA_DIR", notebook_data_dir)
    # The test session's environment for subprocesses: one CPU device, the tests' XLA flags and
    # the session's persistent compilation cache (a notebook that restores a checkpoint compiles
    # the trainer's initialisation again, and 02 and 03 train the same tiny Odin).
    for key, value in helpers.subprocess_env(num_devices=1).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        # The cell's source and its traceback, without the terminal colours.
        pytest.fail(f"{name}: " + ANSI_COLOUR.sub("", str(e)), pytrace=False)
    # Every plotting notebook drew something.
    images = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]  # fmt: skip
    assert images, f"{name}: no figure"
