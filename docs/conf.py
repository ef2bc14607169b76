"""Sphinx configuration of the atomscale_accessors documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``. Every notebook in
``notebooks/`` is executed during the build (each starts its own local server) and shown
with its outputs; a cell that fails fails the build. ``ATOMSCALE_DOCS_EXECUTE=0`` shows
the notebooks as stored instead, for a quick build (the test suite's).

Links to other projects' documentation (intersphinx) need their inventories, fetched
over the network. Without a network the build still passes: an unreachable inventory is
reported as a note, and the references to that project stay plain text.
``ATOMSCALE_DOCS_STRICT_LINKS=1`` makes an unreachable inventory an error again.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from pathlib import Path

import sphinx_autosummary_accessors

import atomscale_accessors  # registers the accessors, so autosummary can find them

HERE = Path(__file__).resolve().parent
NOTEBOOKS = HERE.parent / "notebooks"
# Sphinx reads sources only from inside this directory: show copies of the notebooks.
NOTEBOOK_COPIES = HERE / "examples"


def _copy_notebooks() -> None:
    NOTEBOOK_COPIES.mkdir(exist_ok=True)
    wanted = {path.name for path in NOTEBOOKS.glob("*.ipynb")}
    for stale in NOTEBOOK_COPIES.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for name in sorted(wanted):
        source, copy = NOTEBOOKS / name, NOTEBOOK_COPIES / name
        # Copy only what changed, so Sphinx does not re-read unchanged notebooks.
        if not copy.exists() or not filecmp.cmp(source, copy, shallow=False):
            shutil.copyfile(source, copy)


_copy_notebooks()
# autosummary writes a page per entry of the API reference into generated/ but never removes
# one: start afresh, so an entry taken out of the reference leaves no page behind.
shutil.rmtree(HERE / "generated", ignore_errors=True)

project = "atomscale-accessors"
author = "atomscale_accessors developers"
copyright = "the atomscale_accessors developers"
release = atomscale_accessors.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx_autosummary_accessors",
]

root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]

# -- MyST and MyST-NB ----------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# Each notebook starts and stops a local server of its own, so it runs anywhere the package
# with its server, plot and dask extras is installed.
nb_execution_mode = "off" if os.environ.get("ATOMSCALE_DOCS_EXECUTE") == "0" else "force"
nb_execution_timeout = 180  # seconds per cell; the slowest takes a few
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = True  # what a notebook writes stays out of the source tree

# -- Links to other projects -----------------------------------------------------------------
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "pandas": ("https://pandas.pydata.org/docs", None),
    "xarray": ("https://docs.xarray.dev/en/stable", None),
    "pandera": ("https://pandera.readthedocs.io/en/stable", None),
    "dask": ("https://docs.dask.org/en/stable", None),
    "requests": ("https://requests.readthedocs.io/en/latest", None),
    "matplotlib": ("https://matplotlib.org/stable", None),
}
intersphinx_timeout = 10


class _UnreachableInventoryIsANote(logging.Filter):
    """Turns intersphinx's "failed to reach any of the inventories" warning into a note."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "failed to reach" in str(record.msg):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


if os.environ.get("ATOMSCALE_DOCS_STRICT_LINKS") != "1":
    # Sphinx logs through the standard logging module, under the "sphinx." prefix.
    logging.getLogger("sphinx.sphinx.ext.intersphinx").addFilter(_UnreachableInventoryIsANote())

# -- API reference -------------------------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = False
numpydoc_xref_param_type = False
# Structural checks only (unknown or misordered sections, malformed parameter lists and
# directives); style checks would make the build fail on wording.
numpydoc_validation_checks = {"GL06", "GL07", "GL09", "GL10", "PR03", "PR10", "RT02", "SS01"}

# -- HTML ----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"atomscale-accessors {release}"
html_theme_options = {
    "github_url": "https://github.com/atomscale/atomscale-accessors",
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
