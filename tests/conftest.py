"""Shared fixtures. The ``atomscale_server`` fixture comes from the package's pytest plugin.

Tests that need an extra which is not installed are skipped, saying which extra: a test
using a local server (the ``atomscale_server`` fixture or :func:`module_server`) needs the
``server`` extra; modules needing another extra skip themselves at their top.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

import atomscale_accessors
from atomscale_accessors import Client
from atomscale_accessors.cli import main

if TYPE_CHECKING:
    from atomscale_accessors.server import LocalServer


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def _needs(extra: str) -> str:
    return f'needs the {extra} extra (pip install "atomscale-accessors[{extra}]")'


MISSING = {
    extra
    for extra, modules in {
        "server": ("fastapi", "uvicorn"),
        "dask": ("dask", "distributed"),
        "units": ("pint",),
        "plot": ("matplotlib",),
    }.items()
    if not _installed(*modules)
}
HAS_SERVER = "server" not in MISSING
NO_SERVER = _needs("server")
needs_server = pytest.mark.skipif(not HAS_SERVER, reason=NO_SERVER)
needs_dask = pytest.mark.skipif("dask" in MISSING, reason=_needs("dask"))
needs_units = pytest.mark.skipif("units" in MISSING, reason=_needs("units"))
needs_plot = pytest.mark.skipif("plot" in MISSING, reason=_needs("plot"))

# The package's docstring examples (--doctest-modules) that need an extra: modules that
# import it at their top are not collected without it, other examples are skipped.
_MODULES_NEEDING = {
    "server": ("server",),
    "dask": ("dask_accessor.py", "dask_lots.py", "dask_stack.py"),
}
_EXAMPLES_NEEDING = {
    "atomscale_accessors.plotting": "plot",
    "atomscale_accessors.pandas_accessor.AtomscaleDataFrameAccessor.plot": "plot",
    "atomscale_accessors.xarray_accessor._MapAccessor.plot": "plot",
    "atomscale_accessors.maps.flatten.iter_flatten_map": "dask",
    "fault_proxy": "server",
    "atomscale_accessors.units.coordinate_unit": "units",
}


def _example_needs(item: pytest.DoctestItem) -> set[str]:
    """The extras a docstring example needs: those named for it above, and the server
    extra for every example that starts a local server."""
    needs = {extra for start, extra in _EXAMPLES_NEEDING.items() if item.name.startswith(start)}
    examples = item.dtest.examples if item.dtest is not None else []
    if any("atomscale_accessors.server" in example.source for example in examples):
        needs.add("server")
    return needs


class _PackageExamples:
    """Registered as a plugin, not a conftest hook: the package folder is beside tests/,
    where the hooks of this file do not reach."""

    @staticmethod
    def pytest_ignore_collect(collection_path: Path) -> bool | None:
        package = Path(atomscale_accessors.__file__).parent
        for extra, names in _MODULES_NEEDING.items():
            if extra in MISSING and any(collection_path == package / name for name in names):
                return True
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_PackageExamples(), "atomscale-package-examples")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "atomscale_server" in getattr(item, "fixturenames", ()):
            item.add_marker(needs_server)
        if isinstance(item, pytest.DoctestItem):
            for extra in sorted(_example_needs(item) & MISSING):
                item.add_marker(pytest.mark.skip(reason=_needs(extra)))


def module_server(**options) -> Iterator[LocalServer]:
    """A local server shared by a module's tests (each test makes its own sample): for
    modules with hundreds of cases, where a server per test would dominate the time."""
    if not HAS_SERVER:
        pytest.skip(NO_SERVER)
    from atomscale_accessors.server import LocalServer

    server = LocalServer(**options)
    with server:
        yield server
    server.close()


@pytest.fixture
def client(atomscale_server) -> Client:
    """A client of the test's local server."""
    return Client(api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint)


@pytest.fixture
def sample_id(atomscale_server) -> str:
    """A fresh sample on the test's local server."""
    return atomscale_server.create_sample("wafer-under-test")


@pytest.fixture
def env_client(atomscale_server, monkeypatch) -> None:
    """Configure the default client through the environment, as a user would."""
    monkeypatch.setenv("AS_API_KEY", atomscale_server.api_key)
    monkeypatch.setenv("AS_API_ENDPOINT", atomscale_server.endpoint)
    monkeypatch.delenv("ATOMSCALE_API_KEY", raising=False)


@pytest.fixture
def run(capsys, atomscale_server):
    """The command line run in-process: ``run(*argv)`` is (status, stdout, stderr), with
    the key of the test's server checked to be in neither."""

    def runner(*argv: str) -> tuple[int, str, str]:
        status = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert atomscale_server.api_key not in out + err
        return status, out, err

    return runner


def thickness_frame(n: int = 30, *, seed: int = 0, index: pd.Index | None = None) -> pd.DataFrame:
    """A table of thickness points, as a user keeps them: own column names, own labels."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    x = (np.arange(n) % side) * 7.5 - 100.0
    y = (np.arange(n) // side) * 7.5 - 100.0
    frame = pd.DataFrame(
        {"x_mm": x, "y_mm": y, "thk": 100.0 + rng.normal(0.0, 1.0, n) / 3.0},
        index=index
        if index is not None
        else pd.Index([f"site-{i:03d}" for i in range(n)], name="site"),
    )
    return frame


THICKNESS_MAPPING = {
    "x": "x_mm",
    "y": "y_mm",
    "value": "thk",
    "property_name": "thickness",
    "property_unit": "nm",
    "coord_units": "mm",
}

_ = atomscale_accessors  # registers the accessors
