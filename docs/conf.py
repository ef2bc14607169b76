"""Sphinx configuration of the atomscale_accessors documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``. The notebooks in
``notebooks/`` are shown as they are stored (no outputs); the test suite executes them.
"""

from __future__ import annotations

import filecmp
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
    "sphinx_autosummary_accessors",
]

root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]

# -- MyST and MyST-NB ----------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# The notebooks need a running server and take a while: the test suite runs them, the
# documentation shows them as stored.
nb_execution_mode = "off"

# -- API reference -------------------------------------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = False
numpydoc_xref_param_type = False
# Structural checks only (unknown or misordered sections, malformed parameter lists and
# directives); style checks would make the build fail on wording.
numpydoc_validation_checks = {"GL06", "GL07", "GL09", "GL10", "PR03", "PR10", "RT02", "SS01"}

# -- HTML ----------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"atomscale-accessors {release}"
html_theme_options = {
    "description": "pandas and xarray maps as Atomscale spatial annotations",
    "fixed_sidebar": True,
    "show_relbars": True,
}
html_static_path: list[str] = []
