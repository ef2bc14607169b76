"""The pandera models of the library: canonical records and annotation frames.

Canonical records are the one shape every input is brought to before it is validated and
sent: one row per annotation, the columns of the API's annotation body, indexed by the
labels of the input rows they came from. Annotation frames are what the API stored, in the
columns and dtypes the official ``atomscale`` SDK uses, so frames from either library line
up. The structure of xarray maps is checked in :mod:`atomscale_accessors.maps` with a
``pandera.xarray`` schema built for the map at hand.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from .fields import (
    ANNOTATION_COLUMNS,
    COORD_COLUMNS,
    FLOAT_COLUMNS,
    POSITION_KEY,
    RECORD_COLUMNS,
    RECORD_STRING_COLUMNS,
    is_uuid,
)
from .keys import repeated_positions, value_codes
from .limits import COORD_REF_FRAMES, MAX_METADATA_BYTES, MAX_METADATA_DEPTH

__all__ = [
    "ANNOTATION_COLUMNS",
    "COORD_COLUMNS",
    "COORD_REF_FRAMES",
    "FLOAT_COLUMNS",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_TEXT_LENGTH",
    "METADATA_DEPTH_CHECK",
    "METADATA_SIZE_CHECK",
    "POSITION_KEY",
    "RECORD_COLUMNS",
    "RECORD_STRING_COLUMNS",
    "AnnotationFrameModel",
    "RecordsModel",
    "compact_records",
    "metadata_depth",
    "metadata_problem",
    "records_schema",
]

#: Longest string accepted in a text field; longer ones are almost always a mistake
#: (a whole file read into a cell) and would bloat every request they are part of.
MAX_TEXT_LENGTH = 1024
#: Names of the checks metadata fails when too large or nested too deep.
METADATA_SIZE_CHECK = f"encoded_at_most_{MAX_METADATA_BYTES}_bytes"
METADATA_DEPTH_CHECK = f"depth_at_most_{MAX_METADATA_DEPTH}"
# Most bytes one character of text takes in a request: text is ASCII-escaped, and a
# character beyond the Basic Multilingual Plane becomes a surrogate pair, "\\ud83d\\ude00".
_MAX_CHAR_BYTES = 12
# Longest JSON number a float64 is written as, e.g. "-2.2250738585072014e-308".
_MAX_FLOAT_BYTES = 24
_UUID_BYTES = 36
#: Largest JSON of one annotation as sent, from the limits above: four text fields of
#: ``MAX_TEXT_LENGTH`` characters, the reference frame, a data id, four numbers and
#: ``MAX_METADATA_BYTES`` of metadata, with their keys: 115,010 bytes, less than the smallest
#: chunk an upload accepts (128 KiB).
MAX_RECORD_BYTES = (
    len("{}")
    + sum(len(f'"{column}":') for column in RECORD_COLUMNS)
    + len(RECORD_COLUMNS) - 1  # commas
    + 4 * (MAX_TEXT_LENGTH * _MAX_CHAR_BYTES + 2)  # name, unit, technique, coordinate unit
    + max(len(frame) for frame in COORD_REF_FRAMES) + 2
    + _UUID_BYTES + 2
    + 4 * _MAX_FLOAT_BYTES  # value, x, y, z
    + MAX_METADATA_BYTES
)  # fmt: skip


def _finite(series: pd.Series) -> pd.Series:
    return pd.Series(
        np.isfinite(series.to_numpy(dtype="float64", na_value=np.nan)), index=series.index
    )


def _per_distinct(series: pd.Series, test: Callable[[Any], bool]) -> pd.Series:
    """``test`` of every value, run once per distinct value: record columns repeat a few
    values over millions of rows. Missing values pass (nullability is its own check)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        categories = series.cat.categories.to_numpy(dtype=object)
        good = np.fromiter((test(c) for c in categories), dtype=bool, count=len(categories))
        return pd.Series(np.append(good, True)[codes], index=series.index)  # -1: missing
    values = series.to_numpy(dtype=object)
    try:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    except (TypeError, UnicodeEncodeError):  # unhashable values, lone surrogates: one by one
        missing = [v is None or (isinstance(v, float) and v != v) for v in values]
        return pd.Series(
            [m or test(v) for v, m in zip(values, missing, strict=True)], index=series.index
        )
    good = np.fromiter((test(u) for u in uniques), dtype=bool, count=len(uniques))
    result = np.ones(len(values), dtype=bool)
    present = codes >= 0
    result[present] = good[codes[present]]
    return pd.Series(result, index=series.index)


def _is_text(value: Any) -> bool:
    """Text that can be sent: a str that encodes to UTF-8 (no lone surrogates, which is
    what undecodable bytes become when read with ``errors="surrogateescape"``)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _length_within(low: int, high: int) -> Callable[[Any], bool]:
    # Only text is measured: a value that is not text fails the text check alone.
    return lambda value: not isinstance(value, str) or low <= len(value) <= high


def encode_metadata(value: Any) -> str:
    """The JSON text sent for an annotation's metadata (ASCII, compact).

    Raises ``ValueError`` or ``TypeError`` for anything that would not come back from the
    server as the same object: not a dict, keys that are not text, NaN, tuples, numpy
    scalars.
    """
    if not isinstance(value, dict):
        raise TypeError(f"metadata must be a dict, not {type(value).__name__}")
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # no lone surrogates
    text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    if json.loads(text) != value:
        raise ValueError("metadata does not survive a JSON round trip (keys must be text)")
    return text


def metadata_problem(value: Any) -> str | None:
    """The check an annotation's metadata fails, or ``None`` when it can be sent.

    ``"json_object"``: not a JSON object that comes back as itself (see
    :func:`encode_metadata`); :data:`METADATA_SIZE_CHECK`: more than
    ``MAX_METADATA_BYTES`` encoded; :data:`METADATA_DEPTH_CHECK`: nested deeper than
    ``MAX_METADATA_DEPTH``.

    Examples
    --------
    >>> from atomscale_accessors.schemas import metadata_problem
    >>> metadata_problem({"site": 7}) is None, metadata_problem({"a": [[[1]]]})
    (True, None)
    >>> metadata_problem([1, 2]), metadata_problem({"blob": "x" * 70_000})
    ('json_object', 'encoded_at_most_65536_bytes')
    """
    try:
        text = encode_metadata(value)
    except RecursionError:  # nested past what json can encode
        return METADATA_DEPTH_CHECK
    except (TypeError, ValueError):
        return "json_object"
    if len(text) > MAX_METADATA_BYTES:
        return METADATA_SIZE_CHECK
    # Each level opens a bracket: text with few brackets needs no walk.
    brackets = text.count("{") + text.count("[")
    if brackets > MAX_METADATA_DEPTH and metadata_depth(value) > MAX_METADATA_DEPTH:
        return METADATA_DEPTH_CHECK
    return None


def metadata_depth(value: Any, stop: int = MAX_METADATA_DEPTH + 1) -> int:
    """Levels of nesting of a metadata object (1 for a flat one), counted without
    recursion and only up to ``stop`` (so that a cycle or a very deep object ends it).

    Examples
    --------
    >>> from atomscale_accessors.schemas import metadata_depth
    >>> metadata_depth({"a": {"b": [1]}})
    3
    """
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth >= stop:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _per_object(series: pd.Series, test: Callable[[Any], bool]) -> pd.Series:
    """``test`` of every value, run once per distinct object: a map's records share one
    metadata dict. Missing values pass (nullability is its own check)."""
    seen: dict[int, bool] = {}
    values = series.to_numpy(dtype=object)
    result = np.ones(len(values), dtype=bool)
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and value != value):
            continue
        key = id(value)
        if key not in seen:
            seen[key] = test(value)
        result[i] = seen[key]
    return pd.Series(result, index=series.index)


@functools.cache
def _records_schema() -> pa.DataFrameSchema:
    """Canonical annotation records, validated before anything is sent (see
    :class:`RecordsModel`).

    Built as a schema rather than a pandera model: making a model's schema imports
    ``dask.dataframe`` whenever dask is installed (0.2 s and about 20 MiB), which an
    upload of a map or a frame does not need.
    """

    def check(name: str, test: Callable[[pd.Series], pd.Series]) -> pa.Check:
        return pa.Check(test, name=name)

    def distinct(name: str, test: Callable[[Any], bool]) -> pa.Check:
        return check(name, lambda series: _per_distinct(series, test))

    finite = check("finite", _finite)
    text = distinct("text", _is_text)
    short = distinct(f"length_at_most_{MAX_TEXT_LENGTH}", _length_within(0, MAX_TEXT_LENGTH))

    def number(nullable: bool) -> pa.Column:
        return pa.Column(float, nullable=nullable, checks=[finite])

    def optional_text(*checks: pa.Check) -> pa.Column:
        return pa.Column(nullable=True, checks=[*checks])

    columns = {
        "property_name": pa.Column(
            nullable=False,
            checks=[
                text,
                distinct(f"length_1_to_{MAX_TEXT_LENGTH}", _length_within(1, MAX_TEXT_LENGTH)),
            ],
        ),
        "property_value": number(nullable=False),
        "property_unit": optional_text(text, short),
        "char_source_type": optional_text(text, short),
        "coord_ref_frame": pa.Column(
            nullable=False, checks=[pa.Check.isin(list(COORD_REF_FRAMES))]
        ),
        "coord_units": optional_text(text, short),
        "coord_x": number(nullable=True),
        "coord_y": number(nullable=True),
        "coord_z": number(nullable=True),
        "data_id": optional_text(distinct("uuid", is_uuid)),
        # One check, one encoding per row; validation names the failed rule per row
        # (see metadata_problem).
        "metadata": pa.Column(
            object,
            nullable=True,
            checks=[
                check(
                    "json_object",
                    lambda series: _per_object(series, lambda v: metadata_problem(v) is None),
                )
            ],
        ),
    }

    def whole(name: str, test: Callable[[pd.DataFrame], pd.Series]) -> pa.Check:
        # A frame-wide check handles missing values itself: pandera's ignore_na would
        # compute isna() of the whole frame, once per check.
        return pa.Check(test, name=name, ignore_na=False)

    frame_checks = [
        # One annotation per property per position (records_schema can drop this rule).
        whole("unique_position", _unique_position),
        whole("coord_units_given_with_coordinates", _units_with_coords),
        # A position with x but not y (or y but not x) is a gap in the data, not a point.
        whole("x_and_y_together", lambda df: df["coord_x"].isna() == df["coord_y"].isna()),
        # One property in two units cannot be compared, mapped or gridded: a mistake.
        whole(
            "one_unit_per_property",
            lambda df: _agrees_with_first(df["property_unit"], df["property_name"]),
        ),
        whole("one_coordinate_unit", lambda df: _agrees_with_first(df["coord_units"], None)),
    ]
    return pa.DataFrameSchema(
        columns, checks=frame_checks, strict=True, ordered=True, coerce=False, name="RecordsModel"
    )


def _unique_position(df: pd.DataFrame) -> pd.Series:
    return pd.Series(~repeated_positions(df), index=df.index)


def _units_with_coords(df: pd.DataFrame) -> pd.Series:
    has_coord = df[list(COORD_COLUMNS)].notna().any(axis=1)
    return ~has_coord | df["coord_units"].notna()


class RecordsModel(pa.DataFrameModel):
    """Canonical annotation records, validated before anything is sent.

    One row per annotation; the index holds the labels of the input rows. Coordinates,
    units, technique, data id and metadata may be missing; a value may not. Text columns
    may be object, string or categorical columns: their values are checked by custom
    checks that test each distinct value once (pandera's own ``str`` dtype and length
    checks test every element in Python, several times slower on a million rows), and
    :func:`compact_records` makes them categoricals, on which every check runs on the
    categories. Text is at most ``MAX_TEXT_LENGTH`` characters.

    The rules are those of :func:`records_schema`; this model gives them to code that
    works with pandera models (``RecordsModel.validate``, ``DataFrame[RecordsModel]``).
    """

    @classmethod
    def to_schema(cls) -> pa.DataFrameSchema:
        return records_schema()


def _agrees_with_first(values: pd.Series, groups: pd.Series | None) -> pd.Series:
    """Whether each value equals the first non-missing value of its group (missing passes)."""
    try:
        codes, uniques = value_codes(values)
    except (TypeError, UnicodeEncodeError):  # not text at all: the text check reports it
        return pd.Series(True, index=values.index)
    used = codes[codes >= 0]
    if len(uniques) <= 1 or not len(used) or (used == used[0]).all():
        return pd.Series(True, index=values.index)
    keyed = pd.Series(np.where(codes >= 0, codes, np.nan), index=values.index)
    if groups is None:
        first = keyed.groupby(np.zeros(len(keyed))).transform("first")
    else:
        try:
            group_codes = value_codes(groups)[0]
        except (TypeError, UnicodeEncodeError):  # the text check reports the names
            return pd.Series(True, index=values.index)
        first = keyed.groupby(np.where(group_codes >= 0, group_codes, np.nan)).transform("first")
    return keyed.isna() | (keyed == first)


def compact_records(records: pd.DataFrame) -> pd.DataFrame:
    """Records with their text columns as categoricals (one pass over each column).

    Record text columns repeat a few values over every row. As categoricals, validation,
    encoding and the result frame work on the few values instead of the million rows. A
    column whose values cannot be categories (unhashable, or text that cannot be encoded)
    is left as it is, for validation to report.

    Examples
    --------
    >>> import pandas as pd
    >>> from atomscale_accessors.schemas import compact_records
    >>> rec = pd.DataFrame({"property_name": ["thickness"] * 3, "property_value": [1.0, 2.0, 3.0]})
    >>> compact_records(rec).dtypes.astype(str).tolist()
    ['category', 'float64']
    """
    columns = {}
    for column in RECORD_STRING_COLUMNS:
        if column in records and not isinstance(records[column].dtype, pd.CategoricalDtype):
            compact = _categorical(records[column])
            if compact is not None:
                columns[column] = compact
    return records.assign(**columns) if columns else records


def _categorical(series: pd.Series) -> pd.Series | None:
    n = len(series)
    if series.dtype == object and n:
        values = series.to_numpy()
        first = values[0]
        try:
            same = bool((values == first).all()) if isinstance(first, str) else False
            empty = first is None and bool((values == None).all())  # noqa: E711 - elementwise
        except (TypeError, ValueError):  # arrays in cells: not text, validation says so
            return None
        if same or empty:
            categories = [first] if same else []
            codes = np.full(n, 0 if same else -1, dtype=np.int8)
            return pd.Series(
                pd.Categorical.from_codes(codes, pd.Index(categories, dtype=object)),
                index=series.index,
            )
    try:
        return series.astype("category")
    except (TypeError, UnicodeEncodeError):
        return None


def records_schema(*, allow_duplicates: bool = False) -> pa.DataFrameSchema:
    """The records schema, optionally without the one-annotation-per-position rule.

    Parameters
    ----------
    allow_duplicates : bool, default False
        Accept several records of one property at one position.

    Returns
    -------
    pandera.pandas.DataFrameSchema
        The records schema, shared (a copy when ``allow_duplicates`` changes it).
    """
    schema = _records_schema()
    if allow_duplicates:
        schema = copy.deepcopy(schema)  # never change the shared one
        schema.checks = [c for c in schema.checks if c.name != "unique_position"]
    return schema


class AnnotationFrameModel(pa.DataFrameModel):
    """Annotations as stored on the platform (what ``fetch`` and ``upload`` return).

    The columns of the official SDK's frames, then ``physical_sample_id`` and ``version``;
    the text columns that repeat a few values are categoricals (see
    :mod:`atomscale_accessors.frames`).
    """

    annotation_id: Series[str] = pa.Field(nullable=False, unique=True)
    data_id: Series[pd.CategoricalDtype] = pa.Field(nullable=True)
    char_source_type: Series[pd.CategoricalDtype] = pa.Field(nullable=True)
    property_name: Series[pd.CategoricalDtype] = pa.Field(nullable=False)
    property_value: Series[float] = pa.Field(nullable=True)
    property_unit: Series[pd.CategoricalDtype] = pa.Field(nullable=True)
    coord_x: Series[float] = pa.Field(nullable=True)
    coord_y: Series[float] = pa.Field(nullable=True)
    coord_z: Series[float] = pa.Field(nullable=True)
    coord_ref_frame: Series[pd.CategoricalDtype] = pa.Field(nullable=True)
    coord_units: Series[pd.CategoricalDtype] = pa.Field(nullable=True)
    metadata: Series[object] = pa.Field(nullable=True)
    last_updated: Series[Any] = pa.Field(nullable=True)
    physical_sample_id: Series[pd.CategoricalDtype] = pa.Field(nullable=True)
    version: Series[pd.CategoricalDtype] = pa.Field(nullable=True)

    class Config:
        strict = True
        ordered = True

    @pa.check("annotation_id", name="uuid")
    @classmethod
    def _id_uuid(cls, series: Series[str]) -> pd.Series:
        return _per_distinct(series, is_uuid)

    @pa.check("last_updated", name="utc_timestamps")
    @classmethod
    def _utc(cls, series: Series[Any]) -> bool:
        dtype = series.dtype
        return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"
