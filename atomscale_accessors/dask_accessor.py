"""The ``atomscale`` accessor of dask DataFrames: validate on the workers, upload once.

The partitions are validated by the workers of whatever dask scheduler is active (threads
by default, a ``distributed`` cluster when a client is connected); every partition must be
valid, and no position may be in two partitions, before anything is sent. Then the
partitions' records stream, one partition at a time, through the same exactly-once upload
as a DataFrame or a map (:func:`~atomscale_accessors.upload.send_records`): one listing of
the sample, one account of every record, memory bounded by a partition. A partition dask
computes twice (a lost worker) is simply read again: nothing is sent twice.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
from dask.dataframe.extensions import register_dataframe_accessor

from .errors import AnnotationValidationError
from .failures import repeat_failures
from .keys import bounding_box, position_hashes, records_key_frame
from .options import UploadOptions
from .records import RecordMapping, build_records, to_records, validated_records
from .schemas import FLOAT_COLUMNS, POSITION_KEY, RECORD_COLUMNS
from .upload import Listing, send_records
from .validation import failure_message, problem_message, validate_records

__all__ = [
    "AtomscaleDaskDataFrameAccessor",
    "PartitionCheck",
    "check_partition",
    "raise_failures",
    "upload_dask_frame",
    "validate_dask_frame",
]

log = logging.getLogger(__name__)

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
        example (all in .failure_cases):
          row 2: property_value = nan (not_nullable)
        """
        return validate_dask_frame(
            self._frame, dropna=dropna, allow_duplicates=allow_duplicates, **mapping
        )

    def upload(
        self,
        sample_id: str | None = None,
        options: UploadOptions | None = None,
        *,
        sample_column: Hashable | None = None,
        dropna: bool = False,
        allow_duplicates: bool = False,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Validate every partition, then upload the records exactly once.

        Takes the options of the pandas accessor's ``upload``; see
        :func:`upload_dask_frame` for the guarantees. Returns the created annotations as
        one pandas annotation frame, partition after partition.

        With ``sample_column=`` instead of a sample, each row goes to the sample its
        column names, and each sample is uploaded by a task on the workers (see
        :func:`~atomscale_accessors.dask_lots.upload_dask_lot`): the result is then one
        summary row per sample (``sample``, ``physical_sample_id``, ``records``,
        ``created``, ``existing``), not the annotations.

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
        if (sample_id is None) == (sample_column is None):
            raise TypeError(
                "upload() takes a sample (a name or a UUID) or sample_column=, one of them"
            )
        if sample_column is not None:
            from .dask_lots import upload_dask_lot

            opts, mapping = UploadOptions.take(kwargs, options)
            _check_options(mapping)
            return upload_dask_lot(
                self._frame,
                sample_column,
                opts,
                dropna=dropna,
                allow_duplicates=allow_duplicates,
                mapping=mapping,
            )
        assert sample_id is not None
        return upload_dask_frame(
            self._frame,
            sample_id,
            options,
            dropna=dropna,
            allow_duplicates=allow_duplicates,
            **kwargs,
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
        box=bounding_box(records["coord_x"], records["coord_y"]),
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


def _checked_records(
    partition: pd.DataFrame, *, dropna: bool, mapping: dict[str, Any]
) -> pd.DataFrame:
    """The records of a partition that :func:`check_partition` found valid, less the rows
    ``dropna`` drops (which that check reported)."""
    records = to_records(partition, **mapping)
    if dropna:
        records = records[records["property_value"].notna().to_numpy()]
    return records


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
    options: UploadOptions | None = None,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    **kwargs: Any,
) -> pd.DataFrame:
    """Validate a dask DataFrame on the active scheduler, then upload it exactly once.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        The measurements; each partition is computed twice (validation, then upload),
        more when a check needs a closer look.
    sample_id : str
        The physical sample: its name or its UUID. A name is looked up (or created, with
        ``create_sample=True``) once the frame is validated.
    options : UploadOptions, optional
        How the upload runs; see :class:`~atomscale_accessors.options.UploadOptions`.
    dropna, allow_duplicates : bool, default False
        As for the pandas accessor; see :func:`validate_dask_frame`.
    **kwargs
        The upload's options by name (fields of
        :class:`~atomscale_accessors.options.UploadOptions`), and the mapping options of
        the pandas accessor.

    Returns
    -------
    pandas.DataFrame
        The annotation frame of the created annotations (and updated ones with
        ``if_exists="update"``), indexed by the input rows, partition after partition.

    Raises
    ------
    AnnotationValidationError
        Some partition is invalid, or two partitions share a position; nothing was sent.
    AnnotationExistsError, UploadError
        As for :func:`~atomscale_accessors.upload.send_records`.

    Notes
    -----
    The records stream to the upload in the driver process, one partition at a time, so
    one exactly-once account covers the whole frame. Spreading many samples over a
    cluster is a matter of one such upload per sample.
    """
    opts, mapping = UploadOptions.take(kwargs, options)
    _check_options(mapping)
    checks = _validated_checks(ddf, dropna, allow_duplicates, mapping)
    n_records = sum(check.n_records for check in checks)
    if n_records == 0:
        raise AnnotationValidationError("nothing to upload: the input has no records")
    # Validated above: the partitions are only mapped again, not checked again.
    records = ddf.map_partitions(
        functools.partial(_checked_records, dropna=dropna, mapping=mapping),
        meta=_records_meta(ddf),
        clear_divisions=True,
    )
    parts = records.to_delayed()
    return send_records(
        lambda: (dask.compute(part)[0] for part in parts),
        sample_id,
        opts,
        total=n_records,
        listing=Listing.covering(
            [name for check in checks for name in check.names],
            [check.box for check in checks if check.n_records],
        ),
    )


def _validated_checks(
    ddf: dd.DataFrame, dropna: bool, allow_duplicates: bool, mapping: dict[str, Any]
) -> list[PartitionCheck]:
    """Validate every partition on the workers and check positions across partitions;
    raise on invalid input."""
    parts = ddf.to_delayed()
    checks: list[PartitionCheck] = list(
        dask.compute(
            *[
                dask.delayed(check_partition, pure=False)(
                    part, dropna=dropna, allow_duplicates=allow_duplicates, mapping=mapping
                )
                for part in parts
            ]
        )
    )
    raise_failures(checks)
    candidates = _repeated_across([check.hashes for check in checks])
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
    return checks


def raise_failures(checks: Sequence[PartitionCheck]) -> None:
    """Raise one ``AnnotationValidationError`` with the failures of every partition."""
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
    keys = records_key_frame(records)
    keys["_partition"] = np.concatenate([np.full(len(f), n) for n, f in parts])
    spread = keys.groupby(list(POSITION_KEY), dropna=False, sort=False)["_partition"].transform(
        "nunique"
    )
    across = (spread > 1).to_numpy()
    if not across.any():
        return  # hash collisions only
    labels = records.index[across]
    if allow_duplicates:
        reasons = [
            "records of one position are in different partitions: an exactly-once upload "
            "needs them in one partition (shuffle the frame on its coordinate columns first)"
        ]
        table = repeat_failures(
            labels, "same_partition", "the same position is in another partition"
        )
    else:
        reasons, table = [], repeat_failures(labels)
    message = (
        problem_message(reasons, table, n_records) if reasons else failure_message(table, n_records)
    )
    raise AnnotationValidationError(message, table, reasons=reasons)


# -- helpers -------------------------------------------------------------------------------
def _records_meta(ddf: dd.DataFrame) -> pd.DataFrame:
    """An empty frame of canonical records, indexed like the input."""
    return pd.DataFrame(
        {
            column: pd.Series(dtype="float64" if column in FLOAT_COLUMNS else object)
            for column in RECORD_COLUMNS
        },
        index=ddf._meta.index[:0],
    )


def _check_options(mapping: dict[str, Any]) -> None:
    unknown = set(mapping) - set(RecordMapping.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unexpected mapping options: {sorted(unknown)}")
