"""Uploading a map, or a stack of maps (one per sample): validate everything, then send.

:func:`upload_map` is what ``Dataset.atomscale.upload`` calls; :func:`upload_map_stack`
what it calls with ``sample_dim=``. Both read each map's structure with
:mod:`atomscale_accessors.maps` and validate all of it first (:func:`prepare_map`), then
hand the records (or, for a dask-backed map, a factory of its blocks) to
:func:`~atomscale_accessors.upload.send_records`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import xarray as xr

from .client import resolve_client
from .errors import AnnotationValidationError, MapStructureError
from .failures import agree, cap_message, clip, plural, quote
from .lots import SampleJob, account, join_frames, resolve_samples, run_jobs, sample_key
from .maps.flatten import flatten_plan, iter_plan_blocks, validate_plan_blocks
from .maps.plan import is_dask
from .maps.structure import plan_map
from .options import MapOptions, UploadOptions, split_options
from .schemas import compact_records
from .upload import Listing, send_records
from .validation import validate_records

__all__ = ["PreparedMap", "prepare_map", "stack_error", "upload_map", "upload_map_stack"]


@dataclass(frozen=True)
class PreparedMap:
    """A map validated completely, ready to be sent to a sample.

    ``records`` holds the validated records of a numpy-backed map; a dask-backed map keeps
    none (``records`` is None) and is flattened again, block by block, when sent.
    """

    n_records: int
    records: pd.DataFrame | None
    send: Callable[[str, UploadOptions], pd.DataFrame]


def prepare_map(ds: xr.Dataset, options: MapOptions) -> PreparedMap:
    """Read and validate a whole map; nothing is sent.

    A dask-backed map is read one block at a time and no block is kept: memory stays
    bounded by a block, and the blocks are computed again when the map is sent. The
    upload of either lists what the sample holds only for the map's properties within
    the map's extent.
    """
    plan = plan_map(ds, options)
    allow = plan.allow_duplicates(options.allow_duplicates)
    if not plan.chunked:
        flat = compact_records(flatten_plan(plan))
        records = validate_records(flat, dropna=options.dropna, allow_duplicates=allow)

        def send_whole(sample_id: str, upload: UploadOptions) -> pd.DataFrame:
            return send_records(records, sample_id, upload)

        return PreparedMap(len(records), records, send_whole)

    rows = options.block_rows
    n_records = validate_plan_blocks(plan, rows, dropna=options.dropna, allow_duplicates=allow)
    listing = Listing.covering([p.name for p in plan.properties], [plan.box()])

    def send_blocks(sample_id: str, upload: UploadOptions) -> pd.DataFrame:
        # Flattening never yields a NaN value, so the blocks of pass 2 need no dropna.
        # A factory, not one generator: the upload may need a second look at every block.
        blocks = lambda: iter_plan_blocks(plan, rows)  # noqa: E731
        return send_records(blocks, sample_id, upload, total=n_records, listing=listing)

    return PreparedMap(n_records, None, send_blocks)


def upload_map(
    ds: xr.Dataset,
    sample: str,
    options: UploadOptions | None = None,
    map_options: MapOptions | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Validate a map completely, then upload it; return the created annotations.

    A dask-backed map is read twice, one block at a time: the first pass validates every
    block (and keeps none), the second flattens the blocks again and streams them to the
    upload. So nothing is sent when any block is invalid, and memory stays bounded by a
    block, at the price of computing the map twice.

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified.
    sample : str
        The physical sample: a name or a UUID (see
        :func:`~atomscale_accessors.upload.send_records`).
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
    return prepare_map(ds, mopts).send(sample, opts)


def upload_map_stack(
    ds: xr.Dataset,
    sample_dim: Hashable,
    options: UploadOptions | None = None,
    map_options: MapOptions | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Upload a stack of maps, one per sample: the labels along ``sample_dim`` name the
    samples (names or UUIDs).

    Every map of the stack is validated before anything is sent (the problems of all of
    them in one error); the names are then resolved with one listing (created when
    ``create_sample=True``), and each sample gets its own exactly-once upload, several at
    once. One sample's failure does not stop the others
    (:class:`~atomscale_accessors.lots.LotUploadError` accounts for each).

    A dask-backed stack is uploaded on the workers instead, a task per sample (see
    :mod:`atomscale_accessors.dask_stack`), and the result is one row per sample.

    Returns
    -------
    pandas.DataFrame
        The created annotations of every sample, sample after sample in the order of the
        stack, with the ``physical_sample_id`` of each. For a dask-backed stack, one row per
        sample instead: ``sample``, ``physical_sample_id``, ``records``, ``created`` and
        ``existing`` (as :func:`~atomscale_accessors.dask_lots.upload_dask_lot` returns).
    """
    opts, mopts = split_options(kwargs, options, map_options)
    labels = _stack_labels(ds, sample_dim)
    if _dask_backed(ds) and not opts.dry_run:
        from .dask_stack import upload_dask_stack

        return upload_dask_stack(ds, sample_dim, labels, opts, mopts)
    prepared = _prepare_stack(ds, sample_dim, labels, mopts)
    if opts.dry_run:  # a dry run needs no sample
        parts = [
            one.send("", opts).assign(sample=label)
            for label, one in zip(labels, prepared, strict=True)
        ]
        return pd.concat(parts)
    client = resolve_client(opts.client)
    ids = resolve_samples(pd.Series(labels, index=[sample_key(v) for v in labels]), opts, client)
    jobs = []
    for label, one in zip(labels, prepared, strict=True):
        sample_id = ids[sample_key(label)]
        jobs.append(
            SampleJob(sample_id, label, one.n_records, _sender(one, sample_id), one.records)
        )
    outcomes = run_jobs(jobs, replace(opts, client=client))
    return account(jobs, outcomes, join_frames)


def _dask_backed(ds: xr.Dataset) -> bool:
    """Whether any data variable of the map holds a dask array (other chunked arrays are
    read on the driver, as a map of numpy arrays)."""
    return any(is_dask(variable.data) for variable in ds.data_vars.values())


def _sender(prepared: PreparedMap, sample_id: str) -> Callable[[UploadOptions], pd.DataFrame]:
    return lambda upload: prepared.send(sample_id, upload)


def _stack_labels(ds: xr.Dataset, sample_dim: Hashable) -> list[Any]:
    """The sample label of each map of the stack: distinct, none missing."""
    if sample_dim not in ds.dims:
        raise MapStructureError(
            f"no dimension {quote(sample_dim)} to take the samples from "
            f"(dimensions: {clip(list(ds.dims))})"
        )
    labels = list(ds[sample_dim].values) if sample_dim in ds.coords else []
    keys = [sample_key(v) for v in labels]
    if not labels or "" in keys:
        raise MapStructureError(
            f"the labels of dimension {quote(sample_dim)} must name the samples (names or "
            f"UUIDs), got {clip(labels) if labels else 'none'}"
        )
    repeated = sorted({labels[i] for i, k in enumerate(keys) if keys.count(k) > 1}, key=str)
    if repeated:
        raise MapStructureError(
            f"the labels of dimension {quote(sample_dim)} name one sample twice: {clip(repeated)}"
        )
    return labels


def _prepare_stack(
    ds: xr.Dataset, sample_dim: Hashable, labels: list[Any], options: MapOptions
) -> list[PreparedMap]:
    """Validate every map of the stack; one error with the problems of all of them."""
    prepared: list[PreparedMap] = []
    problems: list[tuple[Any, Exception]] = []
    for i, label in enumerate(labels):
        one = ds.isel({sample_dim: i}).drop_vars([sample_dim], errors="ignore")
        try:
            prepared.append(prepare_map(one, options))
        except (MapStructureError, AnnotationValidationError) as exc:
            problems.append((label, exc))
    if problems:
        raise stack_error(problems, len(labels), sample_dim)
    return prepared


def stack_error(
    problems: list[tuple[Any, Exception]], n_maps: int, sample_dim: Hashable
) -> AnnotationValidationError | MapStructureError:
    """One error for the problems of several maps: each map's message under its label,
    and the failure tables joined with a column saying which map."""
    verb = agree(len(problems), "is", "are")
    lines = [
        f"{len(problems)} of {plural(n_maps, 'map')} along {quote(sample_dim)} {verb} invalid:"
    ]
    tables = []
    for label, exc in problems:
        lines.append(f"{quote(label)}: " + str(exc).replace("\n", "\n  "))
        table = getattr(exc, "failure_cases", None)
        if table is not None:
            tables.append(table.assign(sample=label))
    message = cap_message("\n".join(lines))
    table = pd.concat(tables, ignore_index=True) if tables else None
    if all(isinstance(exc, MapStructureError) for _, exc in problems):
        return MapStructureError(message, table)
    return AnnotationValidationError(message, table)
