"""Many samples in one dask DataFrame: each sample's rows are uploaded by a task on the
workers, and the driver keeps only names and per-sample summaries.

How it runs, and why
--------------------
1. **Labels.** The sample column alone is read, and each partition sends back its distinct
   sample keys (a label without case and surrounding blanks, as
   :func:`~atomscale_accessors.lots.sample_key` says) with their first spelling: a few
   bytes per sample, however many rows there are.
2. **Names.** The driver resolves every key with one listing of the samples
   (:func:`~atomscale_accessors.lots.find_samples`); unknown names are reported all at
   once, and none is created yet.
3. **Shuffle.** Each row gets the id of its sample (or, for a name still to be created,
   its key) and the frame is shuffled on it, so that every sample's rows, however its
   label was spelled (a name and its UUID), are in one partition. One partition then
   holds whole samples: a position is unique within a sample when it is unique within
   the sample's rows of that partition, and one task can upload a sample exactly once.
4. **Check.** A task per partition validates it (positions unique within each sample) and
   lists what each of its existing samples holds at the positions it will write: the
   state *before the job*. The driver gathers every partition's failures into one
   :class:`~atomscale_accessors.errors.AnnotationValidationError`; nothing is created or
   sent when there is one. With ``if_exists="fail"`` a sample holding some of its records
   fails alone (as in :func:`~atomscale_accessors.lots.upload_lot`) and is not sent.
5. **Create.** Only now, and only with ``create_sample=True``, are new names created.
6. **Upload.** A task per partition builds its records again and uploads each of its
   samples with :func:`~atomscale_accessors.upload.send_records` (several samples at once,
   ``max_workers`` requests in flight per task), with a client rebuilt from the pickled
   :class:`~atomscale_accessors.client.Client` (its key travels in the task, never in a
   repr or a log line). Each task sends back one small summary per sample.

Exactly once when dask runs a task again (its worker was lost mid-upload): the upload
tasks run with ``if_exists="skip"`` when ``"fail"`` (checked in step 4: nothing was
stored) or ``"skip"`` was asked, so a second run lists the sample, finds what the first
run stored and sends only the rest; ``"update"`` is idempotent and runs as asked.
``"append"`` stores every record again by definition, so a second run would double what
the first sent: it is refused, before anything is read or sent. The counts of a summary
come from the state before the job (step 4), so they are the same after a re-run:
``created`` is what this job stored, whichever run stored it.

The driver never holds records or annotations: the result is one row per sample, and
:class:`~atomscale_accessors.lots.LotUploadError` carries the same table (``.samples``)
and each failed sample's error with its record frames left empty (``.errors``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from .client import Client, resolve_client
from .dask_accessor import PartitionCheck, raise_failures
from .errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    AtomscaleError,
    UploadError,
)
from .failures import clip, quote
from .fields import SAMPLE_ID
from .frame_builder import FrameBuilder
from .frames import annotation_frame
from .lots import (
    LotUploadError,
    SampleJob,
    check_sample_column,
    dry_run_lot,
    find_samples,
    lot_message,
    run_jobs,
    sample_keys,
    split_by,
    unlabelled_rows,
)
from .options import IfExists, UploadOptions
from .records import to_records, validated_records
from .schemas import RECORD_COLUMNS, compact_records
from .upload import Listing, send_records
from .upload.existing import Existing, refuse_clashes
from .upload.ledger import Ledger
from .upload.send import Uploader

__all__ = [
    "NEW",
    "SUMMARY_COLUMNS",
    "SampleOutcome",
    "SampleState",
    "light",
    "refuse_append",
    "resumable",
    "stored_before",
    "summarise",
    "upload_dask_lot",
]

#: The column the rows' sample (its id, or the key of a name to create) is put in.
TARGET = "__atomscale_sample__"
#: How the target of a name that no sample has yet begins.
NEW = "new:"
#: The columns of the frame :func:`upload_dask_lot` returns.
SUMMARY_COLUMNS = ("sample", SAMPLE_ID, "records", "created", "existing")


def upload_dask_lot(
    ddf: dd.DataFrame,
    sample_column: Hashable,
    options: UploadOptions,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    mapping: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Validate a dask DataFrame of many samples, then upload each sample in a task.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The measurements, with a column naming each row's sample (a name or a UUID).
    sample_column : hashable
        That column.
    options : UploadOptions
        How the uploads run. ``max_workers`` requests are in flight per task; the
        cluster keeps (threads of all workers) x ``max_workers`` in flight.
        ``if_exists="append"`` is refused (it cannot be exactly-once when dask runs a task
        again), ``progress`` applies to nothing (see dask's dashboard), and ``dry_run``
        returns the records that would be sent, with their sample, as one pandas frame.
    dropna, allow_duplicates : bool, default False
        As for one sample; positions are compared within each sample.
    mapping : dict, optional
        Where each annotation field comes from (the pandas accessor's mapping options).

    Returns
    -------
    pandas.DataFrame
        One row per sample: ``sample`` (its first spelling), ``physical_sample_id``,
        ``records``, ``created`` (by this job) and ``existing`` (records whose position
        held the property before the job: skipped with ``"skip"``, updated with
        ``"update"``), sorted by sample.

    Raises
    ------
    ValueError
        ``if_exists="append"``; nothing was read or sent.
    AnnotationValidationError
        Invalid rows or rows without a sample, in every partition at once; nothing was
        sent and no sample created.
    SampleNotFoundError
        Names that match no sample (and ``create_sample`` is False); nothing was sent.
    LotUploadError
        Some samples did not complete; ``.samples`` and ``.errors`` say which and why. A
        re-run with ``if_exists="skip"`` completes them.
    """
    refuse_append(options)
    check_sample_column(ddf.columns, sample_column)
    given = _distinct_labels(ddf, sample_column)
    client = None if options.dry_run else resolve_client(options.client)
    found = None if client is None else find_samples(given, options, client)
    targets = {key: NEW + str(key) for key in given.index} | (found.ids if found else {})
    frame = _shuffled(ddf, sample_column, targets)
    job = _Job(sample_column, dropna, allow_duplicates, mapping or {}, options, client)
    if found is None:
        return _dry_run(frame, job)
    checks = _check(frame, job)
    ids = {target: target for target in targets.values() if not target.startswith(NEW)}
    ids |= {NEW + str(key): sample_id for key, sample_id in found.create().items()}
    labels = {targets[key]: label for key, label in reversed(list(given.items()))}
    outcomes = _upload(frame, job, checks, ids)
    states = {target: state for _, samples in checks for target, state in samples.items()}
    return summarise(states, outcomes, ids, labels)


@dataclass(frozen=True)
class _Job:
    """What every task of one job needs (pickled into each)."""

    column: Hashable
    dropna: bool
    allow_duplicates: bool
    mapping: dict[str, Any]
    options: UploadOptions
    client: Client | None

    def task_options(self) -> UploadOptions:
        return resumable(self.options, self.client)


def resumable(options: UploadOptions, client: Client | None) -> UploadOptions:
    """The options of an upload in a task: resumable when dask runs the task again (see
    the module notes), with no progress bar on a worker."""
    mode: IfExists = "update" if options.if_exists == "update" else "skip"
    return replace(options, client=client, if_exists=mode, progress_bar=False)


@dataclass(frozen=True)
class SampleState:
    """One sample of a partition, as the check found it before the job.

    ``error`` is set when the sample is not to be sent (it holds the records and
    ``if_exists="fail"``, or it could not be listed)."""

    records: int
    existing: int = 0
    error: Exception | None = None


@dataclass(frozen=True)
class SampleOutcome:
    """What the upload of one sample came to, as small as it can be."""

    not_created: int = 0
    unknown: int = 0
    error: Exception | None = None


# -- steps on the driver --------------------------------------------------------------------
def refuse_append(options: UploadOptions, what: str = "sample_column on a dask DataFrame") -> None:
    """Refuse ``if_exists="append"`` for uploads in tasks that dask may run again."""
    if options.if_exists == "append":
        raise ValueError(
            f"if_exists='append' cannot be used with {what}: "
            "dask runs a task again when its worker is lost, and a second run would store "
            "again what the first one sent. Use 'skip' (or 'update'); nothing was sent."
        )


def _distinct_labels(ddf: dd.DataFrame, column: Hashable) -> pd.Series:
    """The first spelling of every sample key, by key (rows without a sample left out)."""
    parts = dask.compute(*[dask.delayed(_first_labels)(p) for p in ddf[column].to_delayed()])
    labels = pd.concat(parts) if parts else pd.Series(dtype=object)
    if len(labels) == 0:
        raise AnnotationValidationError(
            f"nothing to upload: no row names a sample in column {quote(column)}"
        )
    return labels[~labels.index.duplicated()]


def _first_labels(labels: pd.Series) -> pd.Series:
    keys = sample_keys(labels).to_numpy()
    first = pd.Series(labels.to_numpy(), index=keys, dtype=object)
    return first[(keys != "") & ~first.index.duplicated()]


def _shuffled(ddf: dd.DataFrame, column: Hashable, targets: dict[str, str]) -> dd.DataFrame:
    """The frame with each row's target, shuffled so that a target's rows are together."""
    meta = ddf._meta.assign(**{TARGET: pd.Series(dtype=object)})
    keyed = ddf.map_partitions(_with_target, column, targets, meta=meta)
    return keyed.shuffle(on=TARGET)


def _with_target(
    partition: pd.DataFrame, column: Hashable, targets: dict[str, str]
) -> pd.DataFrame:
    target = sample_keys(partition[column]).map(targets).fillna("")
    return partition.assign(**{TARGET: target.astype(object)})


def _check(frame: dd.DataFrame, job: _Job) -> list[tuple[PartitionCheck, dict[str, SampleState]]]:
    """Step 4 on the workers; raise every partition's failures at once."""
    checks = dask.compute(
        *[dask.delayed(_check_partition, pure=False)(p, job) for p in frame.to_delayed()]
    )
    raise_failures([check for check, _ in checks])
    return list(checks)


def _upload(
    frame: dd.DataFrame,
    job: _Job,
    checks: list[tuple[PartitionCheck, dict[str, SampleState]]],
    ids: dict[str, str],
) -> dict[str, SampleOutcome]:
    """Step 6: one task per partition, each given the ids of its samples to send."""
    tasks = []
    for part, (_, samples) in zip(frame.to_delayed(), checks, strict=True):
        mine = {t: ids[t] for t, sample in samples.items() if sample.error is None}
        if mine:
            tasks.append(dask.delayed(_upload_partition, pure=False)(part, job, mine))
    outcomes: dict[str, SampleOutcome] = {}
    for part in dask.compute(*tasks):
        outcomes.update(part)
    return outcomes


def summarise(
    states: dict[str, SampleState],
    outcomes: dict[str, SampleOutcome],
    ids: dict[str, str],
    labels: dict[str, Any],
) -> pd.DataFrame:
    """The summary frame, or a LotUploadError with the same rows and every error.

    ``states`` and ``outcomes`` are by target (a sample's id, or :data:`NEW` and the key
    of a name created since), ``ids`` the id of each target and ``labels`` its label."""
    rows, errors = [], {}
    for target, sample in states.items():
        outcome = outcomes.get(target, SampleOutcome(sample.records - sample.existing))
        error = sample.error or outcome.error
        missing = outcome.not_created + outcome.unknown
        if error is not None:
            errors[ids[target]] = error
        rows.append(
            {
                SAMPLE_ID: ids[target],
                "sample": labels[target],
                "records": sample.records,
                "created": sample.records - sample.existing - missing,
                "existing": sample.existing,
                "not_created": outcome.not_created,
                "unknown": outcome.unknown,
                "error": "" if error is None else clip(f"{type(error).__name__}: {error}", 300),
            }
        )
    table = pd.DataFrame(rows)
    table = table.iloc[np.argsort(table["sample"].astype(str).to_numpy(), kind="stable")]
    if not errors:
        return table[list(SUMMARY_COLUMNS)].reset_index(drop=True)
    table = table.set_index(SAMPLE_ID)
    raise LotUploadError(
        lot_message(table, errors),
        samples=table,
        errors=errors,
        created=annotation_frame([]),
        not_created=pd.DataFrame(columns=[*RECORD_COLUMNS, SAMPLE_ID]),
        cause=next(iter(errors.values())),
    )


def _dry_run(frame: dd.DataFrame, job: _Job) -> pd.DataFrame:
    """Validate every partition, then what each would send, with its sample."""
    _check(frame, job)
    parts = dask.compute(*[dask.delayed(_dry_run_partition)(p, job) for p in frame.to_delayed()])
    return pd.concat([part for part in parts if len(part)])


# -- tasks on the workers -------------------------------------------------------------------
def _records(
    partition: pd.DataFrame, job: _Job, *, validate: bool
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame | None, list[str]]:
    """The partition's records, the target of each, and (with ``validate``) the failures
    and reasons, the rows named by their labels in the input."""
    work = partition.reset_index(drop=True)  # rows told apart by position: labels may repeat
    targets = work[TARGET].to_numpy()
    frame = work.drop(columns=[job.column, TARGET])
    if not validate:
        records = to_records(frame, **job.mapping)
        if job.dropna:
            records = records[records["property_value"].notna().to_numpy()]
        return records, targets[records.index.to_numpy()], None, []
    labelled = targets != ""
    tables, reasons = [], []
    if not labelled.all():
        tables.append(unlabelled_rows(work[job.column], pd.Series(~labelled)))
    records = frame.iloc[:0]  # a partition may hold no rows at all after the shuffle
    try:
        if labelled.any():
            records = validated_records(
                frame[labelled],
                dropna=job.dropna,
                allow_duplicates=job.allow_duplicates,
                groups=work[TARGET][labelled],
                **job.mapping,
            )
    except AnnotationValidationError as exc:
        tables.append(exc.failure_cases)
        reasons = exc.reasons
    failures = (
        _in_input_labels(pd.concat(tables, ignore_index=True), partition.index) if tables else None
    )
    return records, targets[records.index.to_numpy()], failures, reasons


def _in_input_labels(table: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    rows = table["index"]
    known = rows.notna().to_numpy()
    table = table.copy()
    table.loc[known, "index"] = pd.Series(
        index[rows[known].astype(np.int64).to_numpy()], index=table.index[known], dtype=object
    )
    return table


def _check_partition(
    partition: pd.DataFrame, job: _Job
) -> tuple[PartitionCheck, dict[str, SampleState]]:
    records, targets, failures, reasons = _records(partition, job, validate=True)
    if failures is not None:
        return PartitionCheck(len(partition), failures, reasons), {}
    groups = _by_target(records, targets)
    if job.client is None:  # a dry run: nothing is listed
        return PartitionCheck(len(records)), {t: SampleState(len(g)) for t, g in groups.items()}
    check = functools.partial(stored_before, job.client, job.options)
    with ThreadPoolExecutor(job.options.max_workers, thread_name_prefix="atomscale-check") as pool:
        found = pool.map(lambda item: check(*item), groups.items())
        return PartitionCheck(len(records)), dict(zip(groups, found, strict=True))


def _by_target(records: pd.DataFrame, targets: np.ndarray) -> dict[str, pd.DataFrame]:
    return {str(t): mine for t, mine in split_by(compact_records(records), targets).items()}


def stored_before(
    client: Client, options: UploadOptions, target: str, records: pd.DataFrame
) -> SampleState:
    """What the sample holds at the records' positions before anything is sent (a
    sample still to be created holds nothing)."""
    if target.startswith(NEW):
        return SampleState(len(records))
    uploader = Uploader(client, target, Ledger(FrameBuilder(target, 0)))
    try:
        existing = Existing.list(uploader, Listing.of(records))
        if len(existing) == 0:
            return SampleState(len(records))
        if options.if_exists == "fail":
            refuse_clashes([records], existing)  # raises when any record is stored
            return SampleState(len(records))
        stored = existing.lookup(records)
    except AnnotationExistsError as exc:
        return SampleState(len(records), len(exc.existing), light(exc))
    except (AtomscaleError, OSError) as exc:
        return SampleState(len(records), 0, light(exc))
    return SampleState(len(records), int((stored >= 0).sum()))


def _upload_partition(
    partition: pd.DataFrame, job: _Job, ids: dict[str, str]
) -> dict[str, SampleOutcome]:
    """Upload the partition's samples named in ``ids``; a small outcome for each."""
    records, targets = _records(partition, job, validate=False)[:2]
    groups = _by_target(records, targets)
    jobs = [
        SampleJob(ids[t], t, len(groups[t]), functools.partial(send_records, groups[t], ids[t]))
        for t in ids
    ]
    done = run_jobs(jobs, job.task_options())
    outcomes = {}
    for sample, result in zip(jobs, done, strict=True):
        if isinstance(result, pd.DataFrame):
            outcomes[sample.label] = SampleOutcome()
        elif isinstance(result, UploadError):
            outcomes[sample.label] = SampleOutcome(
                len(result.not_created), len(result.unknown), light(result)
            )
        else:  # refused before anything was sent
            outcomes[sample.label] = SampleOutcome(sample.n_records, 0, light(result))
    return outcomes


def _dry_run_partition(partition: pd.DataFrame, job: _Job) -> pd.DataFrame:
    records, _, _, _ = _records(partition, job, validate=True)
    if len(records) == 0:
        return records
    labels = partition.reset_index(drop=True)[job.column]
    plan = dry_run_lot(records, labels, job.options)
    return plan.set_axis(partition.index[plan.index.to_numpy()])


def light(error: Exception) -> Exception:
    """The error with its frames emptied: what travels back to the driver is small."""
    light = copy.copy(error)
    for name, value in vars(error).items():
        if isinstance(value, pd.DataFrame):
            setattr(light, name, value.iloc[:0])
    return light
