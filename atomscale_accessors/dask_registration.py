"""``ddf.atomscale`` in every import order, without importing dask (or the accessor) early.

The dask accessor needs dask, pandera and the upload engine, together more than a second
of imports. Importing the package must not pay that, nor must a user of dask who never
touches ``ddf.atomscale``. So the package never imports ``dask.dataframe`` itself:

* When ``dask.dataframe`` is already imported, :func:`install` puts a
  :class:`DeferredAccessor` on ``dask.dataframe.DataFrame`` straight away.
* Otherwise it puts a one-shot finder first on :data:`sys.meta_path`. Asked for
  ``dask.dataframe``, the finder takes itself off the path, lets the other finders find
  the module as they would have, and wraps the loader so that the placeholder is
  installed right after the module has run. Nothing else is intercepted, and only the
  loader of that one module is wrapped.

The placeholder imports :mod:`atomscale_accessors.dask_accessor` on first access, from
the class (``dd.DataFrame.atomscale``, as the API reference does) or from a frame. That
module registers the real accessor with dask's own ``register_dataframe_accessor``,
which replaces the placeholder; the access is then answered by what dask installed. The
registration first asks whether the name is taken: that question reaches the placeholder
while the module is still running, finds it still in place, and is answered "no", so
dask registers without a warning. The import machinery's per-module lock makes
concurrent first accesses wait for one import instead of racing, and the placeholder is
never removed before the accessor is in place, so no thread sees the name missing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["ACCESSOR_NAME", "DeferredAccessor", "install"]

#: The name of the accessor on every supported type.
ACCESSOR_NAME = "atomscale"
_DASK_DATAFRAME = "dask.dataframe"
_ACCESSOR_MODULE = "atomscale_accessors.dask_accessor"


class DeferredAccessor:
    """Stands in for the dask accessor on ``owner`` until first used, then imports it."""

    def __init__(self, owner: type) -> None:
        self._owner = owner  # not the class looked up from, which may be a subclass

    def __get__(self, obj: Any, cls: type) -> Any:
        if vars(self._owner).get(ACCESSOR_NAME) is self:
            importlib.import_module(_ACCESSOR_MODULE)  # registers the real accessor
            if vars(self._owner).get(ACCESSOR_NAME) is self:
                # The module is being imported further up this thread's stack and its
                # registration asks whether the name is free: it is, for dask's purpose.
                raise AttributeError(ACCESSOR_NAME)
        return getattr(cls if obj is None else obj, ACCESSOR_NAME)


def _install_placeholder(dataframe_module: ModuleType) -> None:
    frame_type = getattr(dataframe_module, "DataFrame", None)
    if frame_type is not None and ACCESSOR_NAME not in vars(frame_type):
        setattr(frame_type, ACCESSOR_NAME, DeferredAccessor(frame_type))


class _PlaceholderLoader(importlib.abc.Loader):
    """The loader of ``dask.dataframe``, which then installs the placeholder."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _install_placeholder(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, resource readers
        return getattr(self._loader, name)


class _DaskDataFrameFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``dask.dataframe`` once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _DASK_DATAFRAME:
            return None
        with contextlib.suppress(ValueError):  # one shot; the search below must skip it
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _PlaceholderLoader(spec.loader)
        return spec


def install() -> None:
    """Make ``ddf.atomscale`` available now or whenever ``dask.dataframe`` is imported."""
    module = sys.modules.get(_DASK_DATAFRAME)
    if module is not None:
        _install_placeholder(module)
    elif not any(isinstance(finder, _DaskDataFrameFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DaskDataFrameFinder())
