"""A dask-backed stack of maps, one per sample, uploaded on the workers: each sample's
map is computed, validated and sent by tasks of its own, and the calling process keeps
only the labels and one summary row per sample.

The steps are those of :mod:`atomscale_accessors.dask_lots`, with a sample's map in place
of a partition's rows:

1. **Names.** The labels along the stack's dimension are resolved with one listing of the
   samples; every unknown name is reported at once, and none is created yet.
2. **Check.** A task per sample computes its map, validates it
   (:func:`~atomscale_accessors.map_upload.prepare_map`) and lists what the sample holds
   where the map lies: the state *before the job*. The problems of every map come back in
   one error, and then nothing is created or sent.
3. **Create.** Only now, and only with ``create_sample=True``, are new names created.
4. **Upload.** A task per sample computes its map again and uploads it, resumable
   (``if_exists`` "skip" or "update", see :func:`~atomscale_accessors.dask_lots.resumable`):
   when dask runs the task again after losing its worker, the second run sends only what
   the first did not store. ``"append"`` is refused before anything is read or sent.

A task holds one sample's map and its records: the memory of one sample, on a worker.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import dask
import pandas as pd
import xarray as xr

from .client import Client, resolve_client
from .dask_lots import (
    NEW,
    SampleOutcome,
    SampleState,
    light,
    refuse_append,
    resumable,
    stored_before,
    summarise,
)
from .errors import AnnotationValidationError, AtomscaleError, MapStructureError, UploadError
from .lots import find_samples, sample_key
from .map_upload import prepare_map, stack_error
from .options import MapOptions, UploadOptions

__all__ = ["upload_dask_stack"]


def upload_dask_stack(
    ds: xr.Dataset,
    sample_dim: Hashable,
    labels: list[Any],
    options: UploadOptions,
    map_options: MapOptions,
) -> pd.DataFrame:
    """Validate every map of a dask-backed stack on the workers, then upload each map to
    its sample in a task of its own.

    Parameters
    ----------
    ds : xarray.Dataset
        The stack; ``labels`` are its labels along ``sample_dim`` (names or UUIDs).
    sample_dim : hashable
        The dimension with one map per sample.
    labels : list
        The label of each map, distinct and none missing.
    options, map_options : UploadOptions, MapOptions
        As for one map; ``max_workers`` requests are in flight per task.

    Returns
    -------
    pandas.DataFrame
        One row per sample, as :func:`~atomscale_accessors.dask_lots.upload_dask_lot`
        returns: ``sample``, ``physical_sample_id``, ``records``, ``created`` (by this
        call) and ``existing``, sorted by sample.

    Raises
    ------
    ValueError
        ``if_exists="append"``; nothing was read or sent.
    MapStructureError, AnnotationValidationError
        Invalid maps, all of them in one error; nothing was sent and no sample created.
    SampleNotFoundError
        Names that match no sample (and ``create_sample`` is False); nothing was sent.
    LotUploadError
        Some samples did not complete; a re-run with ``if_exists="skip"`` completes them.
    """
    refuse_append(options, "a dask-backed stack of maps")
    given = pd.Series(labels, index=[sample_key(label) for label in labels], dtype=object)
    client = resolve_client(options.client)
    found = find_samples(given, options, client)
    targets = [found.ids.get(key, NEW + key) for key in given.index]
    maps = {
        target: ds.isel({sample_dim: i}).drop_vars([sample_dim], errors="ignore")
        for i, target in enumerate(targets)
    }
    job = _Job(map_options, options, client)
    states = _check(maps, job, labels, sample_dim)
    ids = {target: target for target in targets if not target.startswith(NEW)}
    ids |= {NEW + str(key): sample_id for key, sample_id in found.create().items()}
    to_send = [target for target, state in states.items() if state.error is None]
    sent = dask.compute(*[_task(_upload_map, maps[t], job, ids[t]) for t in to_send])
    outcomes = dict(zip(to_send, sent, strict=True))
    return summarise(states, outcomes, ids, dict(zip(targets, labels, strict=True)))


@dataclass(frozen=True)
class _Job:
    """What every task needs (pickled into each)."""

    map_options: MapOptions
    options: UploadOptions
    client: Client


def _check(
    maps: dict[str, xr.Dataset], job: _Job, labels: list[Any], sample_dim: Hashable
) -> dict[str, SampleState]:
    """Step 2 on the workers; raise the problems of every map at once."""
    checked = dask.compute(*[_task(_check_map, one, job, t) for t, one in maps.items()])
    problems = [
        (label, error)
        for label, (error, _) in zip(labels, checked, strict=True)
        if error is not None
    ]
    if problems:
        raise stack_error(problems, len(labels), sample_dim)
    return {target: state for target, (_, state) in zip(maps, checked, strict=True)}


def _task(function: Any, one: xr.Dataset, *args: Any) -> Any:
    # The map is an argument of the task, so dask computes it on the worker that runs it.
    return dask.delayed(function, pure=False)(one, *args)


# -- tasks on the workers -------------------------------------------------------------------
def _check_map(
    one: xr.Dataset, job: _Job, target: str
) -> tuple[MapStructureError | AnnotationValidationError | None, SampleState]:
    """Validate one map and list what its sample holds where the map lies."""
    try:
        prepared = prepare_map(one, job.map_options)
    except (MapStructureError, AnnotationValidationError) as exc:
        return exc, SampleState(0)
    assert prepared.records is not None  # the map came computed
    return None, stored_before(job.client, job.options, target, prepared.records)


def _upload_map(one: xr.Dataset, job: _Job, sample_id: str) -> SampleOutcome:
    """Upload one map to its sample; a small outcome."""
    prepared = prepare_map(one, job.map_options)
    try:
        prepared.send(sample_id, resumable(job.options, job.client))
    except UploadError as exc:
        return SampleOutcome(len(exc.not_created), len(exc.unknown), light(exc))
    except (AtomscaleError, OSError) as exc:  # refused before anything was sent
        return SampleOutcome(prepared.n_records, 0, light(exc))
    return SampleOutcome()
