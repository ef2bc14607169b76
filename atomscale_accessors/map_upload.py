"""Uploading a map: validate every block, then send.

:func:`upload_map` is what ``Dataset.atomscale.upload`` calls. It reads the map's
structure with :mod:`atomscale_accessors.maps`, then hands the records (or, for a
dask-backed map, a factory of its blocks) to
:func:`~atomscale_accessors.upload.send_records`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import xarray as xr

from .maps.flatten import flatten_plan, iter_plan_blocks, validate_plan_blocks
from .maps.structure import plan_map
from .options import MapOptions, UploadOptions, split_options
from .upload import Listing, send_records, upload_records

__all__ = ["upload_map"]


def upload_map(
    ds: xr.Dataset,
    sample_id: str,
    options: UploadOptions | None = None,
    map_options: MapOptions | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Validate a map completely, then upload it; return the created annotations.

    A numpy-backed map is flattened whole and handed to
    :func:`~atomscale_accessors.upload.upload_records` (which validates it). A dask-backed
    map is read twice, one block at a time: the first pass validates every block (and
    keeps none), the second flattens the blocks again and streams them to the upload. So
    nothing is sent when any block is invalid, and memory stays bounded by a block, at the
    price of computing the map twice. The upload lists what the sample holds only for the
    map's properties and within the map's extent.

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified.
    sample_id : str
        UUID of the physical sample.
    options : UploadOptions, optional
        How the upload runs; see :class:`~atomscale_accessors.options.UploadOptions`.
    map_options : MapOptions, optional
        What the map is and how it is validated; see
        :class:`~atomscale_accessors.options.MapOptions`.
    **kwargs
        Options of either kind by name, taking precedence over ``options`` and
        ``map_options``.

    Returns
    -------
    pandas.DataFrame
        The annotation frame of the created annotations, indexed like the records.

    Raises
    ------
    TypeError
        For a keyword that is neither an upload nor a map option.
    """
    opts, mopts = split_options(kwargs, options, map_options)
    plan = plan_map(ds, mopts)
    allow = plan.allow_duplicates(mopts.allow_duplicates)
    if not plan.chunked:
        records = flatten_plan(plan)
        return upload_records(records, sample_id, opts, dropna=mopts.dropna, allow_duplicates=allow)
    rows = mopts.block_rows
    n_records = validate_plan_blocks(plan, rows, dropna=mopts.dropna, allow_duplicates=allow)
    # Flattening never yields a NaN value, so the blocks of pass 2 need no dropna.
    # A factory, not one generator: the upload may need a second look at every block.
    return send_records(
        lambda: iter_plan_blocks(plan, rows),
        sample_id,
        opts,
        total=n_records,
        listing=Listing.covering([p.name for p in plan.properties], [plan.box()]),
    )
