"""The example notebooks run top to bottom against a local server, and are stored clean.

Running them takes about a minute, so the suite checks how they are stored and runs them
only with ``ATOMSCALE_DOCS_EXECUTE=1`` in the environment: the documentation step of
``.ci/run``, which builds the documentation with their outputs as well.

Each notebook starts its own :class:`~atomscale_accessors.server.LocalServer`, so running
one needs nothing but this package with its ``server``, ``plot`` and ``dask`` extras. The
kernel is this interpreter: a ``python3`` kernelspec pointing at ``sys.executable`` is
installed into a temporary directory that comes first on ``JUPYTER_PATH``, so a kernelspec
of another Python elsewhere on the machine cannot be picked up.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {
    "01_dataframe_upload.ipynb",
    "02_xarray_wafer_map.ipynb",
    "03_round_trip_analysis.ipynb",
    "04_lot_analysis.ipynb",
}
# The variable of the documentation build that runs the notebooks (see tests/test_docs.py).
EXECUTE = os.environ.get("ATOMSCALE_DOCS_EXECUTE") == "1"
# Seconds per cell; the slowest cell (a 70 000-point dask upload) takes a few seconds.
CELL_TIMEOUT = 180

# Run first in every notebook: the kernel must be this interpreter, in this environment.
_CHECK_KERNEL = f"""\
import sys
assert sys.prefix == {sys.prefix!r}, f"the kernel runs {{sys.executable}}, not {sys.executable!r}"
"""
# Run last: the notebook stopped the server it started.
_CHECK_STOPPED = """\
import threading
running = [t.name for t in threading.enumerate() if t.name.startswith("atomscale-local-server")]
assert not running, f"the notebook left a server running: {running}"
"""


def _ids(path: Path) -> str:
    return path.stem


def test_the_notebooks_are_there() -> None:
    assert {path.name for path in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    for number, cell in enumerate(code, 1):
        assert cell.outputs == [], f"code cell {number} of {path.name} has outputs"
        assert cell.execution_count is None, f"code cell {number} of {path.name} was run"
    # The documentation uses the first heading as the page title.
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("# ")
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A ``python3`` kernelspec for this interpreter, ahead of any other, and scratch dirs."""
    pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")
    base = tmp_path_factory.mktemp("jupyter")
    kernelspec.install(kernel_name="python3", prefix=str(base))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(base / "share" / "jupyter"))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(base / "runtime"))
        mp.setenv("IPYTHONDIR", str(base / "ipython"))
        # The notebooks pass their client explicitly; nothing may come from the shell.
        for name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT"):
            mp.delenv(name, raising=False)
        yield


@pytest.mark.skipif(not EXECUTE, reason="the notebooks run with ATOMSCALE_DOCS_EXECUTE=1")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids)
def test_notebook_runs(path: Path, jupyter_env: None, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("dask")
    pytest.importorskip("fastapi")
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_CHECK_KERNEL))
    nb.cells.append(nbformat.v4.new_code_cell(_CHECK_STOPPED))
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        # Anything a notebook writes lands here, not in the repository.
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    # Every notebook draws at least one figure.
    assert any("image/png" in out.get("data", {}) for out in outputs)
