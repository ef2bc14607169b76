"""Docstring examples (``--doctest-modules``) that need an extra are skipped without it.

A module that cannot even be imported without its extra is not collected at all.
"""

import importlib.util

import pytest

_EXTRAS = {
    "server": ("fastapi", "uvicorn"),
    "dask": ("dask", "distributed"),
    "plot": ("matplotlib",),
}
_MISSING = {
    extra
    for extra, modules in _EXTRAS.items()
    if any(importlib.util.find_spec(module) is None for module in modules)
}
# Modules that import their extra at the top.
_MODULES = {"server": "atomscale_accessors/server", "dask": "atomscale_accessors/dask_accessor.py"}
# Examples, by the start of their name, that use an extra.
_EXAMPLES = {
    "atomscale_accessors.plotting": "plot",
    "atomscale_accessors.pandas_accessor.AtomscaleDataFrameAccessor.plot": "plot",
    "atomscale_accessors.xarray_accessor._MapAccessor.plot": "plot",
    "atomscale_accessors.maps.flatten.iter_flatten_map": "dask",
    "fault_proxy": "server",
}

collect_ignore = [path for extra, path in _MODULES.items() if extra in _MISSING]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.DoctestItem):
            continue
        for start, extra in _EXAMPLES.items():
            if extra in _MISSING and item.name.startswith(start):
                reason = f'needs the {extra} extra (pip install "atomscale-accessors[{extra}]")'
                item.add_marker(pytest.mark.skip(reason=reason))
