"""Modules of the package whose optional dependencies are missing are not collected for
their docstring examples (``--doctest-modules``): importing them would fail. Their tests in
``tests/`` are skipped, naming the extra."""

import importlib.util

_NEEDS = {
    "atomscale_accessors/server": ("fastapi", "uvicorn"),
    "atomscale_accessors/dask_accessor.py": ("dask", "distributed"),
}

collect_ignore = [
    path
    for path, modules in _NEEDS.items()
    if any(importlib.util.find_spec(module) is None for module in modules)
]
