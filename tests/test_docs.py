"""The documentation builds without a single warning, and the examples on its pages run.

The build is ``sphinx-build -W --keep-going -b html docs <tmp>``, in a subprocess, and it
runs when ``ATOMSCALE_DOCS_EXECUTE`` is set: ``0`` builds the notebooks' pages as stored,
``1`` (a step of ``.ci/run``, which also runs ``tests/test_notebooks.py``) executes the
notebooks, and their pages must show the outputs. The suite leaves it out: it takes
40 seconds of CPU without the notebooks.

Every fenced ```` ```python ```` block of a page is run, in order, in one namespace per
page, against a local server: the environment points the default client at it, and
``sample_id`` is a fresh sample on it. A ```` ```text ```` block right after a python block
(with nothing or the word "prints" between them) is the output the block prints, and must
match. Blocks that are not meant to run on their own are written as
```` ```{code-block} python ```` instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# One worker runs this module's tests, so the documentation is built once per run.
pytestmark = pytest.mark.xdist_group("docs")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUILD_TIMEOUT = 300
# Whether the documentation is built, and with the notebooks executed: see the docstring.
BUILD = os.environ.get("ATOMSCALE_DOCS_EXECUTE") in ("0", "1")
EXECUTE = os.environ.get("ATOMSCALE_DOCS_EXECUTE") == "1"

ACCESSOR_PAGES = [
    f"{owner}.atomscale.{method}"
    for owner, methods in {
        "pandas.DataFrame": ("to_annotations", "validate", "upload", "to_xarray", "plot"),
        "xarray.Dataset": ("to_annotations", "validate", "upload", "plot"),
        "xarray.DataArray": ("to_annotations", "validate", "upload", "plot"),
    }.items()
    for method in methods
] + ["pandas.DataFrame.atomscale", "xarray.Dataset.atomscale", "xarray.DataArray.atomscale"]

_FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def _examples(text: str) -> list[tuple[str, str | None]]:
    """The python blocks of a page, each with the output shown right after it, if any."""
    fences = list(_FENCE.finditer(text))
    examples = []
    for here, after in zip(fences, [*fences[1:], None], strict=False):
        if here["info"].strip() != "python":
            continue
        shows_output = (
            after is not None
            and after["info"].strip() == "text"
            and text[here.end() : after.start()].strip() in ("", "prints")
        )
        examples.append((here["body"], after["body"] if shows_output else None))
    return examples


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


# The README's examples run too: its first snippet must work as written.
PAGES_WITH_EXAMPLES = [
    page for page in [*PAGES, ROOT / "README.md"] if _examples(page.read_text("utf-8"))
]


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation built into a temporary directory, warnings being errors."""
    if not BUILD:
        pytest.skip("the documentation is built with ATOMSCALE_DOCS_EXECUTE=0 or 1 (1 in .ci/run)")
    for module in ("sphinx", "myst_nb", "numpydoc", "sphinx_autosummary_accessors"):
        pytest.importorskip(module)
    # Built from a copy: the build writes into its source folder (generated/, examples/),
    # and two builds of one folder at once (two test runs, two workers) break each other.
    tree = tmp_path_factory.mktemp("docs")
    source = tree / "docs"
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("_build", "generated"))
    shutil.copytree(ROOT / "notebooks", tree / "notebooks")
    out = tree / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    result = subprocess.run(
        [*command, str(source), str(out)],
        env={**os.environ, "ATOMSCALE_DOCS_EXECUTE": "1" if EXECUTE else "0"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"the docs build failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_docs_build_without_warnings(html: Path) -> None:
    for page in PAGES:
        assert (html / f"{page.stem}.html").is_file(), page.name


@pytest.mark.parametrize("name", ACCESSOR_PAGES)
def test_each_accessor_method_has_its_page(html: Path, name: str) -> None:
    page = html / "generated" / f"{name}.html"
    assert page.is_file()
    text = page.read_text(encoding="utf-8")
    owner, _, attribute = name.partition(".atomscale")
    # The page documents the accessor member, with its docstring.
    assert f"{owner.split('.')[-1]}.atomscale" in text
    assert attribute.lstrip(".") in text
    assert 'class="sig' in text


def test_notebooks_are_in_the_docs(html: Path) -> None:
    assert NOTEBOOKS
    for notebook in NOTEBOOKS:
        page = html / "examples" / f"{notebook.stem}.html"
        assert page.is_file(), notebook.name
        assert "LocalServer" in page.read_text(encoding="utf-8")


def test_notebook_pages_show_their_outputs(html: Path) -> None:
    if not EXECUTE:
        pytest.skip("the notebooks are executed with ATOMSCALE_DOCS_EXECUTE=1 (in .ci/run)")
    for notebook in NOTEBOOKS:
        text = (html / "examples" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert "cell_output" in text, f"{notebook.name} shows no output"
        assert "<img" in text, f"{notebook.name} shows no figure"


def test_signatures_show_type_hints(html: Path) -> None:
    text = (html / "generated" / "pandas.DataFrame.atomscale.upload.html").read_text("utf-8")
    params = re.findall(r'class="sig-param">(.*?)</em>', text, re.DOTALL)
    shown = [" ".join(re.sub(r"<[^>]+>", "", param).split()) for param in params]
    assert "sample: str | None = None" in shown, shown


def test_the_pydata_theme_is_used(html: Path) -> None:
    assert "pydata-sphinx-theme" in (html / "index.html").read_text(encoding="utf-8")


def test_api_reference_links_the_accessor_pages(html: Path) -> None:
    text = (html / "api.html").read_text(encoding="utf-8")
    for name in ACCESSOR_PAGES:
        assert f'href="generated/{name}.html' in text, name


def test_pages_have_examples() -> None:
    assert len(PAGES_WITH_EXAMPLES) >= 6


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda page: page.stem)
def test_page_examples_run(
    page: Path, atomscale_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    examples = _examples(page.read_text(encoding="utf-8"))
    monkeypatch.setenv("AS_API_KEY", atomscale_server.api_key)
    monkeypatch.setenv("AS_API_ENDPOINT", atomscale_server.endpoint)
    monkeypatch.delenv("ATOMSCALE_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = {
        "__name__": f"docs_{page.stem}",
        "sample_id": atomscale_server.create_sample("docs"),
    }
    for number, (block, expected) in enumerate(examples, 1):
        where = f"{page.name}, python block {number}"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, where, "exec"), namespace)
        if expected is not None:
            assert _lines(printed.getvalue()) == _lines(expected), f"{where} prints otherwise"
