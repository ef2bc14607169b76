"""Packaging: the pytest plugin stays light, the testing module imports without pytest, the
fixtures work, and the project's metadata (licence, version, links) is what users see."""

from __future__ import annotations

import importlib.metadata
import json
import socket
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from conftest import needs_server

import atomscale_accessors
import atomscale_accessors_pytest
from atomscale_accessors import testing

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PLUGIN = "atomscale_accessors_pytest"
# Loading the plugin must import none of these: pytest loads it in every session.
HEAVY = ("atomscale_accessors", "pandas", "xarray", "pandera", "dask", "fastapi", "uvicorn")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_the_pytest_entry_point_names_the_light_module():
    assert PYPROJECT["project"]["entry-points"]["pytest11"] == {"atomscale_accessors": PLUGIN}
    assert PLUGIN in PYPROJECT["tool"]["setuptools"]["py-modules"]
    assert (ROOT / f"{PLUGIN}.py").is_file()


def test_loading_the_plugin_imports_nothing_heavy(tmp_path: Path):
    done = _python(
        f"""
        import json, sys
        import {PLUGIN}
        heavy = {HEAVY!r}
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy))))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_testing_imports_without_pytest(tmp_path: Path):
    # A finder that refuses pytest, as an environment without it would: an import of
    # pytest at the top of the testing module (or of the package) fails here.
    done = _python(
        """
        import json, sys

        class NoPytest:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("pytest", "_pytest"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoPytest())
        import atomscale_accessors.testing as testing
        print(json.dumps([testing.__all__, hasattr(testing, "atomscale_server")]))
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[], False]


def test_testing_re_exports_the_plugin_fixtures():
    assert testing.atomscale_server is atomscale_accessors_pytest.atomscale_server
    assert testing.atomscale_session_server is atomscale_accessors_pytest.atomscale_session_server
    assert sorted(testing.__all__) == ["atomscale_server", "atomscale_session_server"]


@needs_server
def test_session_server_is_shared_by_the_session_and_stopped_after(tmp_path: Path):
    # A separate pytest session with the installed plugin: two tests, one server.
    seen = tmp_path / "seen.jsonl"
    (tmp_path / "test_shared.py").write_text(
        textwrap.dedent(
            f"""
            import json

            import requests


            def _record(server, name):
                sample = server.create_sample(name)
                answer = requests.post(
                    f"{{server.endpoint}}physical_samples/{{sample}}/annotations/bulk",
                    json={{"annotations": [{{"property_name": "t", "property_value": 1.0}}]}},
                    headers={{"X-API-KEY": server.api_key}},
                    timeout=10,
                )
                assert answer.status_code == 200
                with open({str(seen)!r}, "a") as out:
                    out.write(json.dumps([server.endpoint, server.annotation_count(sample)]) + "\\n")


            def test_one(atomscale_session_server):
                _record(atomscale_session_server, "one")


            def test_two(atomscale_session_server, atomscale_server):
                _record(atomscale_session_server, "two")
                assert atomscale_server.endpoint != atomscale_session_server.endpoint
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_shared.py"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(rows) == 2
    (first, n_first), (second, n_second) = rows
    assert first == second  # one server for both tests
    assert n_first == n_second == 1  # each test counts on its own sample
    host, port = first.removeprefix("http://").rstrip("/").split(":")
    with socket.socket() as probe:  # stopped at the end of the session
        assert probe.connect_ex((host, int(port))) != 0


def test_version_comes_from_the_package_metadata():
    assert atomscale_accessors.__version__ == importlib.metadata.version("atomscale-accessors")


def test_project_metadata():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "atomscale_accessors developers" in licence
    assert "version" not in project.get("dynamic", [])
    for classifier in (
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Framework :: Pytest",
        "Operating System :: OS Independent",
    ):
        assert classifier in project["classifiers"]
    assert set(project["urls"]) >= {"Homepage", "Documentation", "Issues"}
    assert all(
        url.startswith("https://github.com/atomscale/atomscale-accessors")
        for url in project["urls"].values()
    )
    requires = PYPROJECT["build-system"]["requires"]
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in requires)
