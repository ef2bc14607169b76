"""Validate measurement maps and attach them to Atomscale samples as spatial annotations.

Importing the package registers the ``atomscale`` accessor on pandas DataFrames and on
xarray Datasets and DataArrays (and on dask DataFrames, see
:mod:`atomscale_accessors.dask_registration`)::

    import atomscale_accessors

    created = df.atomscale.upload(sample_id)
    stored = atomscale_accessors.fetch(sample_id)
    grid = stored.atomscale.to_xarray()

The import loads pandas, xarray and the accessors only. The rest (pandera, dask, the HTTP
client, the upload engine) is imported when first used: the accessors' methods import
what they call, and the names below are imported when first looked up (PEP 562).
"""

import importlib
import logging
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:  # the one source of the version: the metadata of the installed distribution
    __version__ = version("atomscale-accessors")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from . import dask_registration, errors
from .pandas_accessor import AtomscaleDataFrameAccessor
from .xarray_accessor import AtomscaleDataArrayAccessor, AtomscaleDatasetAccessor

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and documentation
    from . import schemas
    from .client import Client, RetryPolicy
    from .frames import fetch
    from .samples import SampleResolver, projects, resolve_project, resolve_sample, samples

# Each module logs on a logger of its own name under this one; an application that
# configures no logging sees nothing of it (notices meant for users are warnings).
logging.getLogger(__name__).addHandler(logging.NullHandler())

dask_registration.install()

#: The public names imported on first use, and the module each comes from.
_LAZY_NAMES: dict[str, str] = {
    "Client": ".client",
    "RetryPolicy": ".client",
    "fetch": ".frames",
    "SampleResolver": ".samples",
    "projects": ".samples",
    "resolve_project": ".samples",
    "resolve_sample": ".samples",
    "samples": ".samples",
}
#: The public modules imported on first use.
_LAZY_MODULES = frozenset({"schemas"})


class _Package(types.ModuleType):
    """The package's module type: ``samples`` stays the function once its module loads.

    The import system binds every imported submodule as an attribute of its package, and
    the function :func:`samples` has the name of its module, :mod:`.samples`, which any
    first use of the package's upload, fetch or command line imports.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY_NAMES and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AtomscaleDataArrayAccessor",
    "AtomscaleDataFrameAccessor",
    "AtomscaleDatasetAccessor",
    "Client",
    "RetryPolicy",
    "SampleResolver",
    "__version__",
    "errors",
    "fetch",
    "projects",
    "resolve_project",
    "resolve_sample",
    "samples",
    "schemas",
]


def __getattr__(name: str) -> Any:
    """Import a public name on its first use; it is an attribute from then on."""
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    try:
        source = _LAZY_NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
