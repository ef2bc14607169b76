"""JSON answers of the API to typed annotation frames.

An annotation frame has the columns and dtypes of the official SDK's
``get_spatial_annotations`` (``annotation_id`` ... ``last_updated``), then
``physical_sample_id`` and ``version``: values and coordinates float64 with NaN for null,
``last_updated`` timezone-aware UTC, text in pandas' default string dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .client import check_uuid, resolve_client
from .schemas import ANNOTATION_COLUMNS

__all__ = [
    "annotation_frame",
    "created_frame",
    "empty_annotation_frame",
    "fetch",
]

_FLOAT_COLUMNS = ("property_value", "coord_x", "coord_y", "coord_z")
# Where each frame column comes from in an API annotation object.
_SOURCE = {
    "annotation_id": "id",
    "metadata": "annotation_metadata",
}


# pandas' default dtype for text: ``str`` on pandas 3, ``object`` on pandas 2.
_TEXT_DTYPE = pd.Series(["text"]).dtype


def _text(values: Sequence[Any] | pd.Series, index: pd.Index | None = None) -> pd.Series:
    """A text column in pandas' default string dtype, as a frame built from JSON would have."""
    return pd.Series(list(values), index=index, dtype=_TEXT_DTYPE)


def _timestamps(values: Sequence[Any] | pd.Series, index: pd.Index | None = None) -> pd.Series:
    # Naive timestamps are UTC (the API has been seen answering both forms).
    parsed = pd.to_datetime(
        pd.Series(values, index=index, dtype=object), utc=True, format="ISO8601"
    )
    return parsed


def empty_annotation_frame(index: pd.Index | None = None) -> pd.DataFrame:
    """An annotation frame with no rows, with the right columns and dtypes."""
    return annotation_frame([], index=index)


def annotation_frame(
    objects: Sequence[dict[str, Any]], index: pd.Index | None = None
) -> pd.DataFrame:
    """Annotation objects as answered by the API to an annotation frame.

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
    columns: dict[str, pd.Series] = {}
    for column in ANNOTATION_COLUMNS:
        key = _SOURCE.get(column, column)
        values = [obj.get(key) for obj in objects]
        if column in _FLOAT_COLUMNS:
            columns[column] = pd.Series(
                np.array([np.nan if v is None else v for v in values], dtype="float64"), index=index
            )
        elif column == "last_updated":
            columns[column] = _timestamps(values, index)
        elif column == "metadata":
            columns[column] = pd.Series(values, index=index, dtype=object)
        elif column == "version":
            columns[column] = _text([None if v is None else str(v) for v in values], index)
        else:
            columns[column] = _text(values, index)
    return pd.DataFrame(columns, index=index)


def created_frame(
    records: pd.DataFrame,
    *,
    ids: Sequence[str],
    last_updated: Sequence[Any],
    versions: Sequence[Any],
    sample_id: str,
) -> pd.DataFrame:
    """The annotation frame of created records: repeated columns from the records
    themselves, and from the answer only what the server added (id, time, version)."""
    index = records.index
    frame = pd.DataFrame(
        {
            "annotation_id": _text(list(ids), index),
            "data_id": _text(records["data_id"].tolist(), index),
            "char_source_type": _text(records["char_source_type"].tolist(), index),
            "property_name": _text(records["property_name"].tolist(), index),
            "property_value": records["property_value"].astype("float64"),
            "property_unit": _text(records["property_unit"].tolist(), index),
            "coord_x": records["coord_x"].astype("float64"),
            "coord_y": records["coord_y"].astype("float64"),
            "coord_z": records["coord_z"].astype("float64"),
            "coord_ref_frame": _text(records["coord_ref_frame"].tolist(), index),
            "coord_units": _text(records["coord_units"].tolist(), index),
            "metadata": records["metadata"].astype(object).where(records["metadata"].notna(), None),
            "last_updated": _timestamps(list(last_updated), index),
            "physical_sample_id": _text([sample_id] * len(index), index),
            "version": _text([None if v is None else str(v) for v in versions], index),
        },
        index=index,
    )
    return frame


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
