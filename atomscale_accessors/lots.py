"""Many samples in one call: a table whose sample column says where each row goes.

The whole table is validated first (a position must be unique within each sample), the
sample names are resolved with one listing, and only then is anything created: the
samples that ``create_sample=True`` allows, then one exactly-once upload per sample,
several at once. One sample's failure does not stop the others; :class:`LotUploadError`
accounts for every row and every sample, and a re-run with ``if_exists="skip"`` completes
the lot exactly once.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .client import resolve_client
from .errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    AtomscaleError,
    SampleNotFoundError,
    UploadError,
)
from .failures import agree, cap_message, clip, failure_table, plural, quote, repeat_failures
from .fields import SAMPLE_ID
from .frames import annotation_frame
from .keys import repeated_positions
from .options import UploadOptions
from .records import validated_records
from .samples import SampleResolver
from .schemas import RECORD_COLUMNS, compact_records
from .upload import send_records
from .upload.chunks import dry_run_frame
from .upload.progress import Progress

__all__ = [
    "FoundSamples",
    "LotUploadError",
    "SampleJob",
    "account",
    "check_sample_column",
    "dry_run_lot",
    "find_samples",
    "join_frames",
    "lot_message",
    "resolve_samples",
    "run_jobs",
    "sample_key",
    "sample_keys",
    "split_by",
    "unlabelled_rows",
    "upload_lot",
]

log = logging.getLogger(__name__)


class LotUploadError(UploadError):
    """Some samples of a lot did not complete; the others did.

    The attributes of :class:`~atomscale_accessors.errors.UploadError` cover the whole
    lot (record frames carry a ``physical_sample_id`` column), and two more say where each
    sample stands.

    Attributes
    ----------
    samples : pandas.DataFrame
        One row per sample, indexed by ``physical_sample_id``: ``sample`` (as given),
        ``records``, ``created``, ``not_created``, ``unknown``, ``error`` (empty when
        the sample completed).
    errors : dict
        The error of each sample that did not complete, by sample id.
    """

    def __init__(
        self, message: str, *, samples: pd.DataFrame, errors: dict[str, Exception], **parts: Any
    ) -> None:
        super().__init__(message, **parts)
        self.samples = samples
        self.errors = errors


@dataclass(frozen=True)
class SampleJob:
    """One sample of a lot: its id, the label it was given by, how many records go to it,
    and how to send them (``send(options)`` returns the created annotations). ``records``,
    when they are held, are what was not created when the job fails before sending."""

    sample_id: str
    label: Any
    n_records: int
    send: Callable[[UploadOptions], pd.DataFrame]
    records: pd.DataFrame | None = None


def upload_lot(
    df: pd.DataFrame,
    sample_column: Hashable,
    options: UploadOptions,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    mapping: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Validate a table of many samples, then upload each sample's rows to it.

    Parameters
    ----------
    df : pandas.DataFrame
        The measurements, with a column naming each row's sample (a name or a UUID).
    sample_column : hashable
        That column.
    options : UploadOptions
        How each upload runs; ``max_workers`` requests are in flight at once over all the
        samples. ``create_sample`` and ``project`` apply to every name.
    dropna, allow_duplicates : bool, default False
        As for one sample; positions are compared within each sample.
    mapping : dict, optional
        Where each annotation field comes from, as for
        :func:`~atomscale_accessors.records.to_records`.

    Returns
    -------
    pandas.DataFrame
        The created annotations, in the order of the input rows, indexed by their labels,
        with the ``physical_sample_id`` of each.

    Raises
    ------
    AnnotationValidationError
        Invalid rows or rows without a sample, in every sample at once; nothing was sent.
    SampleNotFoundError
        Names that match no sample (and ``create_sample`` is False); nothing was sent.
    LotUploadError
        Some samples did not complete; ``.samples`` and ``.errors`` say which and why.
    """
    frame, labels, keys = _split_sample_column(df, sample_column)
    records = validated_records(
        frame, dropna=dropna, allow_duplicates=allow_duplicates, groups=keys, **(mapping or {})
    )
    records = compact_records(records)  # once for the lot, not once per sample
    given = labels.groupby(keys, sort=False).first()  # each sample's first spelling
    if options.dry_run:
        return dry_run_lot(records, labels, options)
    client = resolve_client(options.client)
    ids = resolve_samples(given, options, client)
    jobs = _jobs(records, keys, ids, given, allow_duplicates)
    outcomes = run_jobs(jobs, replace(options, client=client))
    return account(jobs, outcomes, lambda frames: _in_input_order(frames, df.index))


# -- reading the sample column ----------------------------------------------------------------
def _split_sample_column(
    df: pd.DataFrame, column: Hashable
) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """The table without its sample column, the column, and its :func:`sample_keys`;
    every row must name a sample."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    check_sample_column(df.columns, column)
    if not df.index.is_unique:
        df = df.reset_index(drop=True)  # rows are told apart by position
    labels = df[column]
    keys = sample_keys(labels)
    missing = keys == ""
    if missing.any():
        raise AnnotationValidationError(
            f"{int(missing.sum())} of {plural(len(df), 'row')} {agree(int(missing.sum()), 'names', 'name')} "
            f"no sample in column {quote(column)}: "
            f"rows {clip(list(labels.index[missing][:5]))}",
            unlabelled_rows(labels, missing),
        )
    return df.drop(columns=[column]), labels, keys


def check_sample_column(columns: pd.Index, column: Hashable) -> None:
    """Raise ``AnnotationValidationError`` when there is no such column."""
    if column not in columns:
        raise AnnotationValidationError(
            f"no sample column {quote(column)} (columns: {clip(list(columns))})",
            failure_table([(None, column, "column_in_frame", column)]),
        )


def unlabelled_rows(labels: pd.Series, missing: pd.Series) -> pd.DataFrame:
    """The failure table of the rows (``missing``, a mask) whose label names no sample."""
    return failure_table(
        (row, labels.name, "sample_given", value)
        for row, value in zip(labels.index[missing], labels[missing], strict=True)
    )


def sample_keys(labels: pd.Series) -> pd.Series:
    """:func:`sample_key` of every label (worked out once per distinct label)."""
    # The labels as they are: text held by Arrow is factorized without a Python object
    # for each row.
    codes, distinct = pd.factorize(labels, use_na_sentinel=False)
    keys = np.array([sample_key(label) for label in distinct], dtype=object)
    return pd.Series(keys[codes], index=labels.index, dtype=object, name=labels.name)


def split_by(records: pd.DataFrame, owners: np.ndarray) -> dict[Any, pd.DataFrame]:
    """The records of each owner (``owners`` gives one per record), in order of first
    appearance; one sort instead of one pass over all records per owner."""
    codes, distinct = pd.factorize(owners)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(distinct) + 1))
    ordered = records.iloc[order]  # then each owner's records are a slice of it
    return {owner: ordered.iloc[bounds[i] : bounds[i + 1]] for i, owner in enumerate(distinct)}


def sample_key(label: Any) -> str:
    """What makes two labels one sample: names compare without case and surrounding
    blanks, as the platform's SDK compares them."""
    if label is None or (isinstance(label, float) and np.isnan(label)) or label is pd.NA:
        return ""
    return str(label).strip().lower()


# -- samples ------------------------------------------------------------------------------------
def resolve_samples(given: pd.Series, options: UploadOptions, client: Any) -> dict[Hashable, str]:
    """The sample id of each sample key (``given``: the first label of each key), with one
    listing. Every unknown name is reported at once, before any sample is created."""
    found = find_samples(given, options, client)
    return {**found.ids, **found.create()}


@dataclass
class FoundSamples:
    """The samples of a lot that exist (``ids`` by sample key), and the names that match
    none, to be created (``create``) once the input is known to be valid."""

    ids: dict[Hashable, str]
    missing: dict[Hashable, str]
    resolver: SampleResolver

    def create(self) -> dict[Hashable, str]:
        """Create the missing samples (race-safe); their ids by sample key."""
        self.resolver.create = True
        return {key: self.resolver.resolve(label) for key, label in self.missing.items()}


def find_samples(given: pd.Series, options: UploadOptions, client: Any) -> FoundSamples:
    """Look up every sample key with one listing, creating nothing; raise one
    ``SampleNotFoundError`` naming every unknown name unless ``create_sample`` is set."""
    resolver = SampleResolver(client, project=options.project)
    ids: dict[Hashable, str] = {}
    missing: dict[Hashable, SampleNotFoundError] = {}
    for key, label in given.items():
        try:
            ids[key] = resolver.resolve(str(label))
        except SampleNotFoundError as exc:
            missing[key] = exc
    if missing and not options.create_sample:
        raise _not_found(list(missing.values()))
    return FoundSamples(ids, {key: str(given.get(key)) for key in missing}, resolver)


def _not_found(errors: list[SampleNotFoundError]) -> SampleNotFoundError:
    lines = [
        f"{plural(len(errors), 'sample name')} {agree(len(errors), 'matches', 'match')} no sample "
        "(pass create_sample=True to create them):"
    ]
    for error in errors[:10]:
        close = f" (close: {', '.join(map(quote, error.suggestions))})" if error.suggestions else ""
        lines.append(f"  - {quote(error.wanted)}{close}")
    if len(errors) > 10:
        lines.append(f"  ... and {len(errors) - 10} more")
    first = errors[0]
    return SampleNotFoundError(
        cap_message("\n".join(lines)),
        wanted=first.wanted,
        suggestions=first.suggestions,
        project=first.project,
    )


def _jobs(
    records: pd.DataFrame,
    keys: pd.Series,
    ids: dict[Hashable, str],
    given: pd.Series,
    allow_duplicates: bool,
) -> list[SampleJob]:
    """The records of each sample; two labels of one sample (a name and its UUID) join."""
    aligned = keys if records.index.equals(keys.index) else keys.loc[records.index]
    codes, distinct = pd.factorize(aligned.to_numpy())  # a few samples over many rows
    record_ids = np.array([ids[key] for key in distinct], dtype=object)[codes]
    if not allow_duplicates and len(set(ids.values())) < len(ids):
        _check_joined(records, record_ids)
    labels = {ids[key]: label for key, label in given.items()}
    jobs = []
    for sample_id, mine in split_by(records, record_ids).items():
        send = functools.partial(_send_validated, mine, sample_id)
        jobs.append(SampleJob(sample_id, labels[sample_id], len(mine), send, mine))
    return jobs


def _send_validated(records: pd.DataFrame, sample_id: str, options: UploadOptions) -> pd.DataFrame:
    return send_records(records, sample_id, options)


def _check_joined(records: pd.DataFrame, sample_ids: np.ndarray) -> None:
    repeated = repeated_positions(records, pd.factorize(sample_ids)[0])
    if repeated.any():
        table = repeat_failures(records.index[repeated])
        raise AnnotationValidationError(
            f"{plural(int(repeated.sum()), 'record')} {agree(int(repeated.sum()), 'repeats', 'repeat')} "
            "a position of their sample, which the "
            "table names in two ways (a name and its UUID, say)",
            table,
        )


# -- uploading ----------------------------------------------------------------------------------
def run_jobs(jobs: list[SampleJob], options: UploadOptions) -> list[pd.DataFrame | Exception]:
    """Run every job, ``max_workers`` requests in flight in all; the created annotations of
    each, or the error that stopped it."""
    total = sum(job.n_records for job in jobs)
    parallel = max(1, min(options.max_workers, len(jobs)))
    inner = max(1, options.max_workers // parallel)
    bar = Progress(options.progress_bar, total)
    lock = threading.Lock()

    def one(job: SampleJob) -> pd.DataFrame | Exception:
        opts = replace(options, max_workers=inner, progress_bar=_share(bar, lock))
        try:
            return job.send(opts)
        except (AtomscaleError, OSError) as exc:
            log.warning("sample %s did not complete: %s", job.sample_id, clip(str(exc), 200))
            return exc

    try:
        with ThreadPoolExecutor(parallel, thread_name_prefix="atomscale-lot") as pool:
            return list(pool.map(one, jobs))
    finally:
        bar.close()


def _share(bar: Progress, lock: threading.Lock) -> Callable[[int, int | None], None]:
    """A progress callback of one sample that advances the lot's bar."""
    seen = [0]

    def advance(done: int, _total: int | None) -> None:
        with lock:
            bar.advance(done - seen[0])
            seen[0] = done

    return advance


def account(
    jobs: list[SampleJob],
    outcomes: list[pd.DataFrame | Exception],
    join: Callable[[list[pd.DataFrame]], pd.DataFrame],
) -> pd.DataFrame:
    """The created annotations (joined by ``join``), or a LotUploadError accounting for
    every sample."""
    created, parts, rows, errors = [], _Parts(), [], {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, pd.DataFrame):
            created.append(outcome)
            rows.append(_row(job, len(outcome), 0, 0, ""))
            continue
        errors[job.sample_id] = outcome
        parts.add(job, outcome, created)
        error = clip(f"{type(outcome).__name__}: {outcome}", 300)
        rows.append(_row(job, *parts.counts(job, outcome), error))
    result = join(created)
    if not errors:
        return result
    table = pd.DataFrame(rows).set_index(SAMPLE_ID)
    raise LotUploadError(
        lot_message(table, errors),
        samples=table,
        errors=errors,
        created=result,
        **parts.frames(),
        cause=next(iter(errors.values())),
    )


def _row(
    job: SampleJob, created: int, not_created: int, unknown: int, error: str
) -> dict[str, Any]:
    return {
        SAMPLE_ID: job.sample_id,
        "sample": job.label,
        "records": job.n_records,
        "created": created,
        "not_created": not_created,
        "unknown": unknown,
        "error": error,
    }


class _Parts:
    """The record frames of the samples that did not complete, gathered."""

    def __init__(self) -> None:
        self.not_created: list[pd.DataFrame] = []
        self.not_updated: list[pd.DataFrame] = []
        self.unknown: list[pd.DataFrame] = []
        self.mismatched: list[pd.DataFrame] = []
        self.extra: list[pd.DataFrame] = []

    def add(self, job: SampleJob, error: Exception, created: list[pd.DataFrame]) -> None:
        tag = {SAMPLE_ID: job.sample_id}
        if isinstance(error, UploadError):
            created.append(error.created)
            self.not_created.append(error.not_created.assign(**tag))
            self.not_updated.append(error.not_updated.assign(**tag))
            self.unknown.append(error.unknown.assign(**tag))
            self.mismatched.append(error.mismatched)
            self.extra.append(error.extra)
        elif job.records is not None:  # refused before anything was sent (it exists, a 404)
            self.not_created.append(job.records.assign(**tag))

    @staticmethod
    def counts(job: SampleJob, error: Exception) -> tuple[int, int, int]:
        if isinstance(error, UploadError):
            return len(error.created), len(error.not_created), len(error.unknown)
        return 0, job.n_records, 0

    def frames(self) -> dict[str, pd.DataFrame | None]:
        frames = {name: pd.concat(parts) if parts else None for name, parts in vars(self).items()}
        if frames["not_created"] is None:  # streamed records refused before sending
            frames["not_created"] = pd.DataFrame(columns=[*RECORD_COLUMNS, SAMPLE_ID])
        return frames


def _in_input_order(frames: list[pd.DataFrame], index: pd.Index) -> pd.DataFrame:
    whole = join_frames(frames)
    if not index.is_unique:
        return whole  # rows were told apart by position: the index is positions
    order = np.argsort(index.get_indexer(whole.index), kind="stable")
    return whole.iloc[order]


def join_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames of created annotations as one (an empty one when there are none)."""
    filled = [f for f in frames if len(f)]
    if not filled:
        return frames[0] if frames else annotation_frame([])
    return pd.concat(filled) if len(filled) > 1 else filled[0]


def lot_message(table: pd.DataFrame, errors: dict[str, Exception]) -> str:
    """The message of a LotUploadError: the samples that did not complete, capped."""
    failed = table[table["error"] != ""]
    lines = [
        f"{len(failed)} of {plural(len(table), 'sample')} did not complete "
        f"({int(table['created'].sum())} of {int(table['records'].sum())} records created; "
        "re-run with if_exists='skip' to complete them):"
    ]
    for sample_id, row in failed.head(10).iterrows():
        lines.append(f"  - {clip(row['sample'], 60)} ({sample_id}): {row['error']}")
    if len(failed) > 10:
        lines.append(f"  ... and {len(failed) - 10} more (all in .samples)")
    if any(isinstance(e, AnnotationExistsError) for e in errors.values()):
        lines.append("samples that hold these annotations already: see if_exists")
    return cap_message("\n".join(lines))


def dry_run_lot(records: pd.DataFrame, labels: pd.Series, options: UploadOptions) -> pd.DataFrame:
    """What would be sent, sample by sample, with the sample each record goes to."""
    keys = sample_keys(labels).loc[records.index].to_numpy()
    parts = []
    for mine in split_by(records, keys).values():
        part = dry_run_frame([compact_records(mine)], options.chunksize, options.max_chunk_bytes)
        parts.append(part.assign(sample=labels.loc[part.index].to_numpy()))
    return pd.concat(parts)
