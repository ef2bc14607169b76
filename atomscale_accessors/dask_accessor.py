"""The ``atomscale`` accessor of dask DataFrames: validate and upload partition by partition.

The partitions are validated and uploaded by the workers of whatever dask scheduler is
active (threads by default, a ``distributed`` cluster when a client is connected), and the
answer is one annotation frame, like the pandas accessor's.

Bulk create is not idempotent, and dask may run a partition's task more than once (a lost
worker, a retry). The upload stays exactly-once because of how it is split:

1. On the driver, before anything is sent: every partition is validated (one failure
   anywhere and nothing is sent), repeated positions across partitions are refused, the
   sample is listed once, and with ``if_exists="fail"`` any record already stored is
   refused.
2. Each partition's task uploads with ``if_exists="skip"``, told which annotations existed
   before the job. Whatever else it finds stored at its positions can only come from an
   earlier run of this very task (no two partitions share a position): it is not sent
   again, and it is listed and returned as part of the partition's result.

Two runs of the same task at the same moment (a worker cut off from the scheduler but
still running) are not protected against: the API offers no idempotency key.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.dataframe.extensions import register_dataframe_accessor
from pandas.api.types import union_categoricals

from .client import Client, check_uuid, resolve_client
from .errors import AnnotationValidationError, ApiError, TransportError, UploadError
from .frames import (
    REPEATED_TEXT_COLUMNS,
    AnnotationObject,
    decode_annotations,
    empty_annotation_frame,
)
from .keys import FLOAT_KEYS, NULL_TEXT
from .records import RecordMapping, build_records, to_records, validated_records
from .retry import retry_safe
from .schemas import POSITION_KEY, RECORD_COLUMNS
from .upload import IF_EXISTS, IfExists, upload_error, upload_records
from .upload.existing import MAX_NAMED_LISTINGS, Existing, exists_error
from .validation import failure_message, problem_message, validate_records

__all__ = [
    "AtomscaleDaskDataFrameAccessor",
    "PartitionCheck",
    "PartitionUpload",
    "check_partition",
    "upload_dask_frame",
    "upload_partition",
    "validate_dask_frame",
]

log = logging.getLogger("atomscale_accessors")

# Up to this many properties the sample is listed one property at a time (as upload does).


# -- the accessor --------------------------------------------------------------------------
@register_dataframe_accessor("atomscale")
class AtomscaleDaskDataFrameAccessor:
    """Validate a dask DataFrame of measurements and upload it as Atomscale annotations.

    The mapping options are those of the pandas accessor (``x=``, ``y=``, ``value=``,
    ``values=``, ``property_name=``, ``property_unit=``, ``units=``, ``coord_units=``,
    ``coord_ref_frame=``, ``char_source_type=``, ``data_id=``, ``metadata=``); see
    :func:`atomscale_accessors.records.to_records`. They apply to every partition.
    """

    def __init__(self, frame: dd.DataFrame) -> None:
        self._frame = frame

    def to_annotations(self, **mapping: Any) -> dd.DataFrame:
        """The frame as canonical annotation records, lazily (not validated).

        Examples
        --------
        >>> import dask.dataframe as dd
        >>> import pandas as pd
        >>> import atomscale_accessors
        >>> df = pd.DataFrame({"x": [0.0, 5.0, 10.0], "y": 0.0, "thk": [101.2, 99.8, 100.4]})
        >>> ddf = dd.from_pandas(df, npartitions=2)
        >>> rec = ddf.atomscale.to_annotations(
        ...     value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
        ... )
        >>> rec.npartitions, list(rec.columns[:3])
        (2, ['property_name', 'property_value', 'property_unit'])
        >>> rec.compute()["property_value"].tolist()
        [101.2, 99.8, 100.4]
        """
        _check_options(mapping)
        return self._frame.map_partitions(
            functools.partial(to_records, **mapping),
            meta=_records_meta(self._frame),
            clear_divisions=True,  # wide input repeats each label once per property
        )

    def validate(
        self, *, dropna: bool = False, allow_duplicates: bool = False, **mapping: Any
    ) -> dd.DataFrame:
        """Validate every partition now; return the validated records, lazily.

        Raises one ``AnnotationValidationError`` with the failures of all partitions
        (``.failure_cases`` holds every one; the message a capped summary). A position
        repeated in two partitions is a failure too (see :func:`validate_dask_frame`).

        Examples
        --------
        >>> import dask.dataframe as dd
        >>> import pandas as pd
        >>> import atomscale_accessors
        >>> df = pd.DataFrame({"x": [0.0, 5.0, 10.0], "y": 0.0, "thk": [1.0, 2.0, float("nan")]})
        >>> ddf = dd.from_pandas(df, npartitions=2)
        >>> ddf.atomscale.validate(
        ...     value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
        ... )
        Traceback (most recent call last):
        ...
        atomscale_accessors.errors.AnnotationValidationError: 1 of 3 records failed validation (1 failure):
          - property_value: not_nullable (1 case)
        examples (first 1; all in .failure_cases):
          row 2: property_value = nan (not_nullable)
        """
        return validate_dask_frame(
            self._frame, dropna=dropna, allow_duplicates=allow_duplicates, **mapping
        )

    def upload(
        self,
        sample_id: str,
        *,
        client: Any = None,
        if_exists: IfExists = "fail",
        chunk_size: int | None = None,
        max_workers: int | None = None,
        dropna: bool = False,
        allow_duplicates: bool = False,
        **mapping: Any,
    ) -> pd.DataFrame:
        """Validate every partition, then upload them in parallel, exactly once.

        See :func:`upload_dask_frame` for the options and the guarantees. Returns the
        created annotations as one pandas annotation frame, partition after partition.

        Examples
        --------
        >>> import dask.dataframe as dd
        >>> import pandas as pd
        >>> import atomscale_accessors
        >>> from atomscale_accessors.server import LocalServer
        >>> df = pd.DataFrame({"x": [0.0, 5.0, 10.0], "y": 0.0, "thk": [101.2, 99.8, 100.4]})
        >>> ddf = dd.from_pandas(df, npartitions=2)
        >>> with LocalServer() as srv:
        ...     client = atomscale_accessors.Client(api_key=srv.api_key, endpoint=srv.endpoint)
        ...     created = ddf.atomscale.upload(
        ...         srv.create_sample("wafer-1"),
        ...         client=client,
        ...         value="thk",
        ...         property_name="thickness",
        ...         property_unit="nm",
        ...         coord_units="mm",
        ...     )
        >>> created[["property_name", "property_value", "coord_x"]]
          property_name  property_value  coord_x
        0     thickness           101.2      0.0
        1     thickness            99.8      5.0
        2     thickness           100.4     10.0
        """
        return upload_dask_frame(
            self._frame,
            sample_id,
            client=client,
            if_exists=if_exists,
            chunk_size=chunk_size,
            max_workers=max_workers,
            dropna=dropna,
            allow_duplicates=allow_duplicates,
            **mapping,
        )


# -- what runs on the workers --------------------------------------------------------------
@dataclass
class PartitionCheck:
    """What validating one partition found: failures, or what the driver needs to know.

    Attributes
    ----------
    n_records : int
        Records the partition gives (rows, when they could not be turned into records).
    failures : pandas.DataFrame or None
        The failure table (columns ``index``, ``column``, ``check``, ``failure_case``).
    reasons : list of str
        Why the rows could not become records (unknown columns, missing units).
    hashes : numpy.ndarray
        The distinct hashes of the records' positions (see :data:`POSITION_KEY`), sorted.
    names : list of str
        The property names.
    box : tuple of float or None
        ``(x_min, x_max, y_min, y_max)`` of the records, ``None`` when some have no x or y.
    """

    n_records: int
    failures: pd.DataFrame | None = None
    reasons: list[str] = field(default_factory=list)
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    names: list[str] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None


def check_partition(
    partition: pd.DataFrame,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    mapping: dict[str, Any] | None = None,
) -> PartitionCheck:
    """Validate one partition; report its failures, or its positions, names and extent."""
    records, problems = build_records(partition, **(mapping or {}))
    if records is None:
        assert problems is not None
        return PartitionCheck(len(partition), problems.failure_cases, problems.reasons)
    try:
        records = validate_records(
            records, dropna=dropna, allow_duplicates=allow_duplicates, prior=problems
        )
    except AnnotationValidationError as exc:
        return PartitionCheck(len(records), exc.failure_cases, exc.reasons)
    return PartitionCheck(
        len(records),
        hashes=np.unique(position_hashes(records)),
        names=records["property_name"].unique().tolist(),
        box=_box(records),
    )


def _candidate_records(
    partition: pd.DataFrame,
    candidates: np.ndarray,
    *,
    dropna: bool,
    allow_duplicates: bool,
    mapping: dict[str, Any],
) -> pd.DataFrame:
    """The partition's records whose position hash is among ``candidates``."""
    records = validated_records(
        partition, dropna=dropna, allow_duplicates=allow_duplicates, **mapping
    )
    return records[np.isin(position_hashes(records), candidates)]


@dataclass
class _PortableError:
    """An exception as class, args and attributes: the library's errors take keyword-only
    arguments, which ``pickle`` cannot pass back when they travel from a worker."""

    cls: type[BaseException]
    args: tuple[Any, ...]
    state: dict[str, Any]

    @classmethod
    def of(cls, exc: BaseException) -> _PortableError:
        portable = cls(type(exc), exc.args, dict(vars(exc)))
        try:
            pickle.loads(pickle.dumps(portable))
        except Exception:  # an attribute that does not travel: keep the text
            portable = cls(RuntimeError, (f"{type(exc).__name__}: {exc}",), {})
        return portable

    def rebuild(self) -> BaseException:
        exc = self.cls.__new__(self.cls)  # no __init__: it may want arguments args lacks
        exc.args = self.args
        vars(exc).update(self.state)
        return exc


@dataclass
class PartitionUpload:
    """The outcome of one partition's upload, as it travels back to the driver.

    Attributes
    ----------
    created : pandas.DataFrame
        Annotation frame of the partition's stored annotations, indexed by the input rows,
        in partition order; also those an earlier run of the same task stored.
    not_created, not_updated, unknown : pandas.DataFrame
        Canonical records, as in :class:`~atomscale_accessors.errors.UploadError`.
    reused : int
        Annotations found stored by an earlier run of this partition's task.
    failure : object or None
        The exception that stopped the upload, in a form that survives pickling (the
        library's errors take keyword-only arguments); :attr:`error` rebuilds it.
    """

    created: pd.DataFrame
    not_created: pd.DataFrame
    not_updated: pd.DataFrame
    unknown: pd.DataFrame
    reused: int = 0
    failure: _PortableError | None = None

    @property
    def error(self) -> BaseException | None:
        """The exception that stopped the partition's upload, if one did."""
        return None if self.failure is None else self.failure.rebuild()


def upload_partition(
    partition: pd.DataFrame,
    sample_id: str,
    *,
    client: Client,
    if_exists: IfExists = "fail",
    before_ids: Collection[str] = (),
    chunk_size: int | None = None,
    max_workers: int | None = None,
    dropna: bool = False,
    allow_duplicates: bool = False,
    mapping: dict[str, Any] | None = None,
) -> PartitionUpload:
    """Upload one partition; running it again stores nothing twice.

    This is the task each dask worker runs. The driver has validated the partition, made
    sure no other partition has records at its positions, and (``if_exists="fail"``)
    refused clashes with stored annotations already.

    Parameters
    ----------
    partition : pandas.DataFrame
        The partition, in the user's columns.
    sample_id : str
        UUID of the sample.
    client : Client
        A copy per process; each thread makes its own session.
    if_exists : {"fail", "skip", "append", "update"}
        The job's choice. Here "fail" and "append" both store every record: annotations
        that existed before the job (``before_ids``) are stored again as asked, and those an
        earlier run of this task stored are taken as they are.
    before_ids : collection of str
        Ids of the annotations stored at the job's positions before the job started (not
        needed with "update", where a PATCH of the same value is harmless).
    chunk_size, max_workers : int, optional
        Passed to :func:`~atomscale_accessors.upload.upload_records`.
    dropna, allow_duplicates : bool
        Passed to :func:`~atomscale_accessors.records.validated_records`.
    mapping : dict, optional
        The mapping options of the accessor.

    Returns
    -------
    PartitionUpload
        Every record of the partition accounted for; a failure is reported in it, not
        raised, so that the driver can account for the whole job.
    """
    records = validated_records(
        partition, dropna=dropna, allow_duplicates=allow_duplicates, **(mapping or {})
    )
    labels = records.index
    # Positions as the index while uploading: labels may repeat (wide input) and results
    # are put back in partition order by position.
    records = records.set_axis(pd.RangeIndex(len(records)))
    if len(records) == 0:
        none = records.set_axis(labels)
        return PartitionUpload(empty_annotation_frame(labels), none, none, none)
    options: dict[str, Any] = {
        "client": client,
        "chunk_size": chunk_size,
        "max_workers": max_workers,
        "progress": False,
        "validated": True,
    }
    if if_exists == "update":
        # PATCH sets values: a second run updates nothing twice and finds what the first
        # run created unchanged, so its answer covers every record.
        options["if_exists"] = "update"
    else:
        # "skip" passes over what is stored at a record's position; annotations that
        # existed before the job are ignored for "fail" (no clash: checked) and "append"
        # (stored again, as asked), so only an earlier run of this task is passed over.
        options["if_exists"] = "skip"
        options["ignore_ids"] = before_ids if if_exists in ("fail", "append") else ()
    failure: BaseException | None = None
    none = records.iloc[:0]
    not_created = not_updated = unknown = none
    try:
        created = upload_records(records, sample_id, **options)
    except UploadError as exc:
        # The records travel in the result; of the error, only its cause.
        created, failure = exc.created, exc.cause or exc
        not_created, not_updated, unknown = exc.not_created, exc.not_updated, exc.unknown
    except Exception as exc:  # nothing was sent (listing the sample, configuration)
        created, failure, not_created = empty_annotation_frame(none.index), exc, records
    # Records in no group were passed over: stored before the job ("skip"), or by an
    # earlier run of this task, whose annotations belong in the result.
    accounted = np.concatenate(
        [
            frame.index.to_numpy(dtype=np.int64)
            for frame in (created, not_created, not_updated, unknown)
        ]
    )
    passed_over = records[~np.isin(np.arange(len(records)), accounted)]
    earlier = empty_annotation_frame(none.index)
    if len(passed_over):
        try:
            earlier = _stored_by_earlier_run(
                passed_over, sample_id, client, {*before_ids, *created["annotation_id"]}
            )
        except (ApiError, TransportError) as exc:
            # They are stored, but which annotations they are cannot be said.
            log.error("could not list the sample to find earlier runs' annotations (%s)", exc)
            unknown = pd.concat([unknown, passed_over]).sort_index(kind="stable")
            failure = failure or exc
        else:
            if len(earlier):
                log.info(
                    "%d of %d records were stored by an earlier run of this partition",
                    len(earlier),
                    len(records),
                )
            lost = passed_over.index.difference(earlier.index)
            if if_exists != "skip" and len(lost):  # passed over, yet not found again
                unknown = pd.concat([unknown, passed_over.loc[lost]]).sort_index(kind="stable")
                failure = failure or RuntimeError(
                    f"{len(lost)} records were passed over as stored but are not listed"
                )
    stored = _concat_annotation_frames([created, earlier]) if len(earlier) else created
    return PartitionUpload(
        _relabel(stored.sort_index(kind="stable"), labels),
        _relabel(not_created, labels),
        _relabel(not_updated, labels),
        _relabel(unknown, labels),
        reused=len(earlier),
        failure=None if failure is None else _PortableError.of(failure),
    )


def _stored_by_earlier_run(
    records: pd.DataFrame, sample_id: str, client: Client, exclude: set[str]
) -> pd.DataFrame:
    """The annotation frame of the records' stored annotations, other than ``exclude``
    (those that existed before the job and those this run created); one per record."""
    filters: dict[str, Any] = {}
    names = records["property_name"].unique()
    if len(names) == 1:
        filters["property_name"] = names[0]
    box = _box(records)
    if box is not None:
        filters["x_range"], filters["y_range"] = box[:2], box[2:]
    objects = [
        obj for obj in _list_annotations(client, sample_id, **filters) if obj.id not in exclude
    ]
    if not objects:
        return empty_annotation_frame(records.index[:0])
    existing = Existing(objects)
    stored = existing.lookup(records)  # one stored annotation per record, at most
    hit = stored >= 0
    return existing.frame(stored[hit], records.index[hit])


def _relabel(frame: pd.DataFrame, labels: pd.Index) -> pd.DataFrame:
    """A frame indexed by positions, indexed by the input labels at those positions."""
    return frame.set_axis(labels[frame.index.to_numpy(dtype=np.int64)])


def _list_annotations(client: Client, sample_id: str, **filters: Any) -> list[AnnotationObject]:
    """List annotations, retrying any failure that may pass: a GET changes nothing."""
    raw = retry_safe(lambda: client.list_annotations_raw(sample_id, **filters), client.retry)
    return decode_annotations(raw, f"GET /physical_samples/{sample_id}/annotations/")


# -- the driver ----------------------------------------------------------------------------
def validate_dask_frame(
    ddf: dd.DataFrame, *, dropna: bool = False, allow_duplicates: bool = False, **mapping: Any
) -> dd.DataFrame:
    """Validate every partition of a dask DataFrame; return the validated records, lazily.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The measurements.
    dropna, allow_duplicates : bool, default False
        As for the pandas accessor. With ``allow_duplicates=True`` the records of one
        position must still be in one partition: a job is exactly-once because no two
        partitions share a position.
    **mapping
        The mapping options.

    Returns
    -------
    dask.dataframe.DataFrame
        Canonical records; computing it builds (and checks) each partition again.

    Raises
    ------
    AnnotationValidationError
        The failures of every partition in one table; the message shows a few examples.
    """
    _check_options(mapping)
    _validated_checks(ddf, dropna, allow_duplicates, mapping)
    return ddf.map_partitions(
        functools.partial(
            validated_records, dropna=dropna, allow_duplicates=allow_duplicates, **mapping
        ),
        meta=_records_meta(ddf),
        clear_divisions=True,
    )


def upload_dask_frame(
    ddf: dd.DataFrame,
    sample_id: str,
    *,
    client: Any = None,
    if_exists: IfExists = "fail",
    chunk_size: int | None = None,
    max_workers: int | None = None,
    dropna: bool = False,
    allow_duplicates: bool = False,
    **mapping: Any,
) -> pd.DataFrame:
    """Upload a dask DataFrame partition by partition on the active scheduler, exactly once.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The measurements; each partition is read twice (validation, then upload), more
        when a check needs a closer look.
    sample_id : str
        UUID of the physical sample.
    client : Client or SDK client, optional
        Default: configured from the environment (of the driver); copied to the workers.
    if_exists : {"fail", "skip", "append", "update"}, default "fail"
        As for :func:`~atomscale_accessors.upload.upload_records`. "fail" is decided on the
        driver before anything is sent.
    chunk_size, max_workers : int, optional
        Per partition: records per request and requests in flight (so up to
        ``max_workers`` times the number of dask workers in flight in all).
    dropna, allow_duplicates : bool, default False
        As for the pandas accessor; see :func:`validate_dask_frame`.
    **mapping
        The mapping options of the pandas accessor.

    Returns
    -------
    pandas.DataFrame
        The annotation frame of the created annotations (and updated ones with
        ``if_exists="update"``), indexed by the input rows, partition after partition.

    Raises
    ------
    AnnotationValidationError
        Some partition is invalid, or two partitions share a position; nothing was sent.
    AnnotationExistsError
        ``if_exists="fail"`` and some records are stored already; nothing was sent.
    UploadError
        Some partitions' uploads stopped; ``.created``, ``.not_created``, ``.not_updated``
        and ``.unknown`` hold the whole job's account. A re-run with ``if_exists="skip"``
        completes it. (If dask itself gives up on a task, e.g. ``KilledWorker``, its error
        is raised as is: re-run with ``if_exists="skip"``.)
    """
    sid = check_uuid(sample_id)
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
    for name, value in (("chunk_size", chunk_size), ("max_workers", max_workers)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _check_options(mapping)
    api = resolve_client(client)

    checks = _validated_checks(
        ddf,
        dropna,
        allow_duplicates,
        mapping,
        listing=(api, sid),
        refuse_stored=if_exists == "fail",
    )
    if sum(check.n_records for check in checks) == 0:
        raise AnnotationValidationError("nothing to upload: the input has no records")
    stored = checks.stored  # annotations at the job's positions before it started
    if checks.clashes is not None:
        raise checks.clashes
    before = frozenset(obj.id for obj in stored) if if_exists != "update" else frozenset()

    before_node = dask.delayed(before, traverse=False)
    tasks = [
        dask.delayed(upload_partition, pure=False)(
            part,
            sid,
            client=api,
            if_exists=if_exists,
            before_ids=before_node,
            chunk_size=chunk_size,
            max_workers=max_workers,
            dropna=dropna,
            allow_duplicates=allow_duplicates,
            mapping=mapping,
        )
        for part in ddf.to_delayed()
    ]
    results: Sequence[PartitionUpload] = dask.compute(*tasks)
    reused = sum(result.reused for result in results)
    if reused:
        log.info("%d annotations were stored by earlier runs of retried tasks", reused)
    return _finish(results, sid)


class _Checks(list[PartitionCheck]):
    """The partitions' checks, with what the driver learned about the sample."""

    stored: list[dict[str, Any]]
    clashes: Exception | None


def _validated_checks(
    ddf: dd.DataFrame,
    dropna: bool,
    allow_duplicates: bool,
    mapping: dict[str, Any],
    *,
    listing: tuple[Client, str] | None = None,
    refuse_stored: bool = False,
) -> _Checks:
    """Validate every partition and check positions across partitions; raise on invalid
    input. Given a client and a sample, also list what the sample holds at the job's
    positions and (``refuse_stored``) find the records stored already."""
    parts = ddf.to_delayed()
    checks = _Checks(
        dask.compute(
            *[
                dask.delayed(check_partition, pure=False)(
                    part, dropna=dropna, allow_duplicates=allow_duplicates, mapping=mapping
                )
                for part in parts
            ]
        )
    )
    _raise_failures(checks)
    hashes = [check.hashes for check in checks]
    repeated = _repeated_across(hashes)
    checks.stored, checks.clashes = [], None
    stored_hashes = np.empty(0, dtype=np.uint64)
    if listing is not None:
        objects = _list_stored(*listing, checks)
        if objects:
            every = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, np.uint64)
            keyed = position_hashes(_object_keys(objects))
            relevant = np.isin(keyed, every)
            checks.stored = [obj for obj, keep in zip(objects, relevant, strict=True) if keep]
            if refuse_stored:
                stored_hashes = keyed[relevant]
    candidates = np.union1d(repeated, stored_hashes)
    if len(candidates) == 0:
        return checks
    # Hashes only point at candidates; the records themselves decide.
    found = dask.compute(
        *[
            dask.delayed(_candidate_records, pure=False)(
                part,
                candidates,
                dropna=dropna,
                allow_duplicates=allow_duplicates,
                mapping=mapping,
            )
            for part in parts
        ]
    )
    _raise_repeats(found, allow_duplicates, sum(check.n_records for check in checks))
    if refuse_stored and checks.stored:
        records = pd.concat(found)
        existing = Existing(checks.stored)
        at = existing.lookup(records, consume=False)
        hit = at >= 0
        if hit.any():
            checks.clashes = exists_error(existing.frame(at[hit], records.index[hit]))
    return checks


def _raise_failures(checks: Sequence[PartitionCheck]) -> None:
    failed = [check for check in checks if check.failures is not None]
    if not failed:
        return
    table = pd.concat([check.failures for check in failed], ignore_index=True)
    # A problem of the whole frame (a missing column) is found once per partition.
    whole = table["index"].isna()
    if whole.any():
        key = table["column"].astype(str) + "\x00" + table["check"].astype(str)
        table = table[~whole | ~key.duplicated()].reset_index(drop=True)
    reasons = list(dict.fromkeys(reason for check in failed for reason in check.reasons))
    n = sum(check.n_records for check in checks)
    message = problem_message(reasons, table, n) if reasons else failure_message(table, n)
    raise AnnotationValidationError(message, table, reasons=reasons)


def _repeated_across(hashes: list[np.ndarray]) -> np.ndarray:
    """Hashes found in more than one partition (each partition's are distinct)."""
    if len(hashes) < 2:
        return np.empty(0, dtype=np.uint64)
    every = np.sort(np.concatenate(hashes))
    return np.unique(every[1:][every[1:] == every[:-1]])


def _raise_repeats(found: Sequence[pd.DataFrame], allow_duplicates: bool, n_records: int) -> None:
    """Refuse records of one position in two partitions (hash candidates, checked exactly)."""
    parts = [(number, frame) for number, frame in enumerate(found) if len(frame)]
    if len(parts) < 2:
        return
    records = pd.concat([frame for _, frame in parts])
    keys = _normalised_keys(records).reset_index(drop=True)
    keys["_partition"] = np.concatenate([np.full(len(f), n) for n, f in parts])
    spread = keys.groupby(list(POSITION_KEY), dropna=False, sort=False)["_partition"].transform(
        "nunique"
    )
    across = (spread > 1).to_numpy()
    if not across.any():
        return  # hash collisions only
    labels = records.index[across]
    if allow_duplicates:
        check, case = "same_partition", "the same position is in another partition"
        reasons = [
            "records of one position are in different partitions: an exactly-once upload "
            "needs them in one partition (shuffle the frame on its coordinate columns first)"
        ]
    else:
        check, case, reasons = "unique_position", "same property at the same position", []
    table = pd.DataFrame(
        {
            "index": pd.Series(list(labels), dtype=object),
            "column": ", ".join(POSITION_KEY),
            "check": check,
            "failure_case": case,
        }
    )
    message = (
        problem_message(reasons, table, n_records) if reasons else failure_message(table, n_records)
    )
    raise AnnotationValidationError(message, table, reasons=reasons)


def _list_stored(
    client: Client, sample_id: str, checks: Sequence[PartitionCheck]
) -> list[AnnotationObject]:
    """The sample's annotations of the job's properties within its extent (one listing per
    property for a few properties)."""
    names = sorted({name for check in checks for name in check.names})
    boxes = [check.box for check in checks if check.n_records]
    filters: dict[str, Any] = {}
    if boxes and all(box is not None for box in boxes):
        corners = np.array(boxes, dtype="float64")
        filters["x_range"] = (float(corners[:, 0].min()), float(corners[:, 1].max()))
        filters["y_range"] = (float(corners[:, 2].min()), float(corners[:, 3].max()))
    objects: list[AnnotationObject] = []
    for name in names if 0 < len(names) <= MAX_NAMED_LISTINGS else [None]:
        objects += _list_annotations(client, sample_id, property_name=name, **filters)
    return objects


def _finish(results: Sequence[PartitionUpload], sample_id: str) -> pd.DataFrame:
    created = _concat_annotation_frames([result.created for result in results])
    failed = [result for result in results if result.failure is not None]
    if not failed:
        return created
    not_created = pd.concat([result.not_created for result in results])
    not_updated = pd.concat([result.not_updated for result in results])
    unknown = pd.concat([result.unknown for result in results])
    cause = failed[0].error
    assert cause is not None
    raise upload_error(
        f"the upload to sample {sample_id} stopped in {len(failed)} of {len(results)} "
        f"partitions: {cause}",
        created=created,
        not_created=not_created,
        not_updated=not_updated,
        unknown=unknown,
        cause=cause,
    ) from cause


# -- helpers -------------------------------------------------------------------------------
def position_hashes(records: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each record's position key (property, frame, units, x, y, z).

    Records the upload would take for the same position hash alike: -0.0 as 0.0, every
    NaN as one NaN, unset text as one marker. Equal hashes are candidates only; the
    records are compared before anything is decided.
    """
    return pd.util.hash_pandas_object(_normalised_keys(records), index=False).to_numpy()


def _normalised_keys(records: pd.DataFrame) -> pd.DataFrame:
    columns: dict[str, Any] = {}
    for column in POSITION_KEY:
        values = records[column]
        if column in FLOAT_KEYS:
            floats = values.to_numpy(dtype="float64", na_value=np.nan) + 0.0  # -0.0 -> 0.0
            floats[np.isnan(floats)] = np.nan
            columns[column] = floats
        else:
            text = values.to_numpy(dtype=object, na_value=None)
            columns[column] = np.where(pd.isna(text), NULL_TEXT, text).astype(object)
    return pd.DataFrame(columns, index=records.index)


def _object_keys(objects: list[AnnotationObject]) -> pd.DataFrame:
    """The position keys of annotation objects answered by the API."""
    return pd.DataFrame(
        {
            column: np.array(
                [getattr(obj, column) for obj in objects],
                dtype="float64" if column in FLOAT_KEYS else object,
            )
            for column in POSITION_KEY
        }
    )


def _box(records: pd.DataFrame) -> tuple[float, float, float, float] | None:
    xs, ys = records["coord_x"], records["coord_y"]
    if len(records) == 0 or xs.isna().any() or ys.isna().any():
        return None
    return float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())


def _concat_annotation_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate annotation frames, keeping the repeated text columns categorical (a
    plain concat turns categoricals with different categories into objects)."""
    parts = [frame for frame in frames if len(frame)]
    if not parts:
        return frames[0] if frames else empty_annotation_frame()
    if len(parts) == 1:
        return parts[0]
    whole = pd.concat(parts)
    for column in REPEATED_TEXT_COLUMNS:
        if not isinstance(whole[column].dtype, pd.CategoricalDtype):
            whole[column] = union_categoricals(
                [
                    part[column]
                    if isinstance(part[column].dtype, pd.CategoricalDtype)
                    else part[column].astype("category")
                    for part in parts
                ]
            )
    return whole


def _records_meta(ddf: dd.DataFrame) -> pd.DataFrame:
    """An empty frame of canonical records, indexed like the input."""
    return pd.DataFrame(
        {
            column: pd.Series(dtype="float64" if column in FLOAT_KEYS else object)
            for column in RECORD_COLUMNS
        },
        index=ddf._meta.index[:0],
    )


def _check_options(mapping: dict[str, Any]) -> None:
    unknown = set(mapping) - set(RecordMapping.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unexpected mapping options: {sorted(unknown)}")
