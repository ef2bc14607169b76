"""JSON answers of the API to typed annotation frames.

An annotation frame has the columns of the official SDK's ``get_spatial_annotations``
(``annotation_id`` ... ``last_updated``), then ``physical_sample_id`` and ``version``:
values and coordinates float64 with NaN for null, ``last_updated`` timezone-aware UTC,
``annotation_id`` in pandas' default text dtype, ``metadata`` dicts (or None).

The other text columns repeat a handful of values over every row (one property name, one
unit, one sample), so they are categoricals: a million-row frame keeps them in a few
megabytes instead of hundreds, and builds them in milliseconds. They compare equal to
plain text and concatenate with it. (On pandas 2, pass ``observed=True`` when grouping
by them.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .client import check_uuid, resolve_client
from .schemas import ANNOTATION_COLUMNS

__all__ = [
    "REPEATED_TEXT_COLUMNS",
    "annotation_frame",
    "created_frame",
    "empty_annotation_frame",
    "fetch",
]

_FLOAT_COLUMNS = frozenset({"property_value", "coord_x", "coord_y", "coord_z"})
#: Text columns stored as categoricals.
REPEATED_TEXT_COLUMNS = (
    "data_id",
    "char_source_type",
    "property_name",
    "property_unit",
    "coord_ref_frame",
    "coord_units",
    "physical_sample_id",
    "version",
)
# Where each frame column comes from in an API annotation object.
_SOURCE = {"annotation_id": "id", "metadata": "annotation_metadata"}
# pandas' default dtype for text: ``str`` on pandas 3, ``object`` on pandas 2.
_TEXT_DTYPE = pd.Series(["text"]).dtype
# The resolution pandas gives parsed timestamps (us on pandas 3, ns on pandas 2): one
# unit for every frame, empty or not, whatever precision the server wrote.
_TIME_UNIT = pd.to_datetime(pd.Series(["2026-01-01T00:00:00.123456Z"]), utc=True).dt.unit


def _column(name: str, values: Any, index: pd.Index) -> pd.Series:
    """One annotation-frame column in its dtype, from a list or array of values."""
    if name in _FLOAT_COLUMNS:
        return pd.Series(np.asarray(values, dtype="float64"), index=index)
    if name == "last_updated":
        # Naive timestamps are UTC (the API has been seen answering both forms).
        parsed = pd.to_datetime(
            pd.Series(values, index=index, dtype=object), utc=True, format="ISO8601"
        )
        return parsed.dt.as_unit(_TIME_UNIT)
    if name == "metadata":
        return pd.Series(values, index=index, dtype=object)
    if name == "annotation_id":
        return pd.Series(values, index=index, dtype=_TEXT_DTYPE)
    return pd.Series(_categorical(values), index=index)


def _categorical(values: Any) -> pd.Categorical:
    values = np.asarray(values, dtype=object)
    if len(values) and isinstance(values[0], str) and (values == values[0]).all():
        # One value on every row (one property, one unit, one sample): no hashing needed.
        return pd.Categorical.from_codes(
            np.zeros(len(values), dtype=np.int8), pd.Index([values[0]], dtype=_TEXT_DTYPE)
        )
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    # Versions may be numbers in some answers: categories are always text.
    categories = pd.Index([str(u) for u in uniques], dtype=_TEXT_DTYPE)
    if not categories.is_unique:  # 1 and "1" both present
        return pd.Categorical(np.where(codes >= 0, categories.to_numpy(dtype=object)[codes], None))
    return pd.Categorical.from_codes(codes, categories)


def _metadata_copies(metadata: pd.Series) -> list[Any]:
    """The records' metadata as new dicts: a result never shares dicts with its input."""
    values = metadata.to_numpy(dtype=object)
    if len(values) and (values == None).all():  # noqa: E711 - elementwise, not identity
        return [None] * len(values)
    return [dict(m) if isinstance(m, dict) else None for m in values]


def empty_annotation_frame(index: pd.Index | None = None) -> pd.DataFrame:
    """An annotation frame with no rows, with the right columns and dtypes."""
    return annotation_frame([], index=index)


def annotation_frame(
    objects: Sequence[dict[str, Any]], index: pd.Index | None = None
) -> pd.DataFrame:
    """Annotation objects as answered by the API to an annotation frame.

    Parameters
    ----------
    objects : sequence of dict
        Annotation objects, as parsed from the API's JSON.
    index : pandas.Index, optional
        Index of the frame; default a ``RangeIndex``.

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`~atomscale_accessors.schemas.ANNOTATION_COLUMNS`: ``id``
        renamed ``annotation_id`` and ``annotation_metadata`` renamed ``metadata``,
        values and coordinates float64 (NaN for null), ``last_updated`` in UTC.

    Examples
    --------
    >>> from atomscale_accessors.frames import annotation_frame
    >>> frame = annotation_frame(
    ...     [
    ...         {
    ...             "id": "0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a10",
    ...             "physical_sample_id": "a1b2c3d4-5678-90ab-cdef-1234567890ab",
    ...             "property_name": "thickness",
    ...             "property_value": 101.5,
    ...             "property_unit": "nm",
    ...             "coord_x": 1.5,
    ...             "coord_y": 2.0,
    ...             "coord_units": "mm",
    ...             "coord_ref_frame": "sample_relative",
    ...             "last_updated": "2026-11-29T09:30:00Z",
    ...             "version": "1",
    ...         }
    ...     ]
    ... )
    >>> frame[["property_name", "property_value", "coord_z"]]
      property_name  property_value  coord_z
    0     thickness           101.5      NaN
    >>> str(frame["last_updated"].dt.tz)
    'UTC'
    """
    if index is None:
        index = pd.RangeIndex(len(objects))
    columns = {}
    for name in ANNOTATION_COLUMNS:
        key = _SOURCE.get(name, name)
        values = [obj.get(key) for obj in objects]
        if name in _FLOAT_COLUMNS:
            values = [np.nan if v is None else v for v in values]
        columns[name] = _column(name, values, index)
    return pd.DataFrame(columns, index=index)


def created_frame(
    records: pd.DataFrame,
    *,
    ids: Sequence[str],
    last_updated: Sequence[Any],
    versions: Sequence[Any],
    sample_id: str,
) -> pd.DataFrame:
    """The annotation frame of created records: the repeated columns come from the records
    themselves, and from the answer only what the server added (id, time, version)."""
    index = records.index
    sources: dict[str, Any] = {
        "annotation_id": list(ids),
        "last_updated": list(last_updated),
        "version": list(versions),
        "physical_sample_id": np.full(len(index), sample_id, dtype=object),
        "metadata": _metadata_copies(records["metadata"]),
    }
    columns = {
        name: _column(name, sources[name] if name in sources else records[name].to_numpy(), index)
        for name in ANNOTATION_COLUMNS
    }
    return pd.DataFrame(columns, index=index)


def fetch(
    sample_id: str,
    *,
    property_name: str | None = None,
    char_source_type: str | None = None,
    x_range: tuple[float | None, float | None] | None = None,
    y_range: tuple[float | None, float | None] | None = None,
    client: Any = None,
) -> pd.DataFrame:
    """The annotations of a sample as an annotation frame.

    Parameters
    ----------
    sample_id : str
        UUID of the physical sample.
    property_name, char_source_type : str, optional
        Keep only annotations of this property / technique.
    x_range, y_range : (float, float), optional
        Inclusive bounds; an axis is filtered only when both of its bounds are given.
    client : Client or SDK client, optional
        Default: a :class:`~atomscale_accessors.Client` configured from the environment.

    Returns
    -------
    pandas.DataFrame
        One row per annotation (an empty frame with the same columns for a sample without
        annotations).

    Raises
    ------
    ApiError
        Status 404 for an unknown sample.
    """
    sid = check_uuid(sample_id)
    objects = resolve_client(client).list_annotations(
        sid,
        property_name=property_name,
        char_source_type=char_source_type,
        x_range=x_range,
        y_range=y_range,
    )
    return annotation_frame(objects)
