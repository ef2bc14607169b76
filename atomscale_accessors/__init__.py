"""Validate measurement maps and attach them to Atomscale samples as spatial annotations.

Importing the package registers the ``atomscale`` accessor on pandas DataFrames and on
xarray Datasets and DataArrays::

    import atomscale_accessors

    created = df.atomscale.upload(sample_id)
    stored = atomscale_accessors.fetch(sample_id)
    grid = stored.atomscale.to_xarray()
"""

import logging
from importlib.metadata import PackageNotFoundError, version

try:  # the one source of the version: the metadata of the installed distribution
    __version__ = version("atomscale-accessors")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from . import errors, schemas
from .client import Client, RetryPolicy
from .frames import fetch
from .pandas_accessor import AtomscaleDataFrameAccessor
from .samples import SampleResolver, projects, resolve_project, resolve_sample, samples
from .xarray_accessor import AtomscaleDataArrayAccessor, AtomscaleDatasetAccessor

# Each module logs on a logger of its own name under this one; an application that
# configures no logging sees nothing of it (notices meant for users are warnings).
logging.getLogger(__name__).addHandler(logging.NullHandler())

try:  # dask's dataframe support is an extra: the accessor exists where it imports
    import dask.dataframe  # noqa: F401
except ImportError:
    pass
else:
    from . import dask_accessor as _dask_accessor  # noqa: F401  (registers ddf.atomscale)

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
