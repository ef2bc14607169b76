"""JSON answers of the API to typed annotation frames.

An annotation frame has the columns of the official SDK's ``get_spatial_annotations``
(``annotation_id`` ... ``last_updated``), then ``physical_sample_id`` and ``version``:
values and coordinates float64 with NaN for null, ``last_updated`` timezone-aware UTC,
``annotation_id`` in pandas' default text dtype, ``metadata`` dicts (or None).

The other text columns repeat a handful of values over every row (one property name, one
unit, one sample), so they are categoricals with sorted categories: a million-row frame
keeps them in a few megabytes instead of hundreds, and builds them in milliseconds. They
compare equal to plain text and concatenate with it. (On pandas 2, pass ``observed=True``
when grouping by them.)

A frame from :func:`fetch` and the result of an upload have the same columns and dtypes;
``fetch`` orders its rows as the SDK does (:data:`SORT_COLUMNS`), an upload's result
follows the rows of its input.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from .client import check_uuid, resolve_client
from .errors import ApiError, InvalidIdentifierError
from .failures import clip, quote
from .fields import ANNOTATION_COLUMNS, FLOAT_COLUMNS, SAMPLE_NAME, is_uuid

__all__ = [
    "REPEATED_TEXT_COLUMNS",
    "SORT_COLUMNS",
    "TEXT_DTYPE",
    "TIME_UNIT",
    "annotation_frame",
    "categorical",
    "column_series",
    "decode_annotations",
    "empty_annotation_frame",
    "fetch",
    "metadata_copies",
    "sort_annotations",
    "sorted_categorical",
]

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
#: The order of :func:`fetch`'s rows, as the official SDK orders them.
SORT_COLUMNS = ("property_name", "coord_x", "coord_y")
# Where each frame column comes from in an API annotation object.
_SOURCE = {"annotation_id": "id", "metadata": "annotation_metadata"}
# pandas' default dtype for text: ``str`` on pandas 3, ``object`` on pandas 2 (a StringDtype or
# a numpy dtype, hence Any: the stubs of one pandas know only one of them).
TEXT_DTYPE: Any = pd.Series(["text"]).dtype
# The resolution pandas gives parsed timestamps (us on pandas 3, ns on pandas 2): one
# unit for every frame, empty or not, whatever precision the server wrote.
TIME_UNIT = pd.to_datetime(pd.Series(["2026-01-01T00:00:00.123456Z"]), utc=True).dt.unit


def column_series(name: str, values: Any, index: pd.Index, route: str = "") -> pd.Series:
    """One annotation-frame column in its dtype, from a list or array of values."""
    if name in FLOAT_COLUMNS:
        return pd.Series(np.asarray(values, dtype="float64"), index=index)
    if name == "last_updated":
        # Naive timestamps are UTC (the API has been seen answering both forms).
        texts = pd.Series(values, index=index, dtype=object)
        try:
            parsed = pd.to_datetime(texts, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            bad = next(v for v in texts if not _is_time(v))
            raise unreadable(
                route, f"last_updated is not an ISO 8601 time: {quote(bad, 80)}"
            ) from None
        return parsed.dt.as_unit(TIME_UNIT)
    if name == "metadata":
        return pd.Series(values, index=index, dtype=object)
    if name == "annotation_id":
        return pd.Series(values, index=index, dtype=TEXT_DTYPE)
    return pd.Series(categorical(values), index=index)


def _is_time(value: Any) -> bool:
    if value is None:
        return True
    try:
        pd.to_datetime(pd.Series([value], dtype=object), utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def categorical(values: Any) -> pd.Categorical:
    """Repeated values (None for missing) as a categorical of text with sorted categories."""
    values = np.asarray(values, dtype=object)
    if len(values) and isinstance(values[0], str) and (values == values[0]).all():
        # One value on every row (one property, one unit, one sample): no hashing needed.
        return pd.Categorical.from_codes(
            np.zeros(len(values), dtype=np.int8), dtype=text_categories([values[0]])
        )
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return sorted_categorical(codes, uniques)


def sorted_categorical(codes: np.ndarray, values: Sequence[Any]) -> pd.Categorical:
    """Codes into ``values`` (-1 for missing) as a categorical whose categories are the
    values as text, sorted: the one form of every annotation frame's text columns, so
    that frames from any source compare, concatenate and sort alike. Values that are the
    same text (a version answered as 1 and as "1") become one category."""
    texts = [value if isinstance(value, str) else str(value) for value in values]
    categories = sorted(set(texts))
    if texts != categories:
        position = {text: i for i, text in enumerate(categories)}
        table = np.array([position[text] for text in texts] + [-1], dtype=np.int32)
        codes = table[codes]  # code -1 (missing) picks the last entry
        if len(categories) <= np.iinfo(np.int8).max:
            codes = codes.astype(np.int8)
    return pd.Categorical.from_codes(codes, dtype=text_categories(categories))


def text_categories(categories: list[str]) -> pd.CategoricalDtype:
    """The categorical dtype of sorted, distinct texts. A few categories (one property,
    one unit, one version) come up in frame after frame: their dtype is made once and
    shared, which saves validating the categories each time and lets frames concatenate
    without reconciling them."""
    if len(categories) > _SHARED_CATEGORIES:
        return pd.CategoricalDtype(pd.Index(categories, dtype=TEXT_DTYPE))
    return _shared_text_categories(tuple(categories))


_SHARED_CATEGORIES = 16


@functools.lru_cache(maxsize=256)
def _shared_text_categories(categories: tuple[str, ...]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype(pd.Index(list(categories), dtype=TEXT_DTYPE))


class AnnotationObject(msgspec.Struct, gc=False):
    """An annotation object as the API answers it, with the JSON type of every field the
    library reads checked while parsing (unknown fields are skipped)."""

    id: str
    physical_sample_id: str | None = None
    property_name: str | None = None
    property_value: float | None = None
    property_unit: str | None = None
    char_source_type: str | None = None
    coord_ref_frame: str | None = None
    coord_units: str | None = None
    coord_x: float | None = None
    coord_y: float | None = None
    coord_z: float | None = None
    data_id: str | None = None
    annotation_metadata: dict[str, Any] | None = None
    last_updated: str | None = None
    version: str | int | float | None = None


_DECODE_ANNOTATIONS = msgspec.json.Decoder(list[AnnotationObject])
_AT_PATH = re.compile(r"at `\$\[(\d+)\](?:\.(\w+))?")


def decode_annotations(
    raw: bytes, route: str, decoder: msgspec.json.Decoder = _DECODE_ANNOTATIONS
) -> list[Any]:
    """A JSON array of annotation objects answered to ``route`` (``"GET /..."``), as
    structs of ``decoder``'s type; an :class:`ApiError` naming the annotation, the field
    and its value when the answer is not one."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        where = _AT_PATH.search(str(exc))
        if where is None:
            raise unreadable(route, f"not an array of annotation objects ({exc})") from None
        number, name = int(where[1]), where[2]
        item = msgspec.json.decode(raw)[number]
        value = item.get(name) if name and isinstance(item, dict) else item
        raise unreadable(
            route, f"annotation {number}: {name or 'the object'} is {quote(value, 80)} ({exc})"
        ) from None
    except msgspec.DecodeError as exc:
        raise unreadable(route, f"not JSON ({exc})") from None


def unreadable(route: str, problem: str) -> ApiError:
    """The error for a 2xx answer the library cannot read."""
    method, _, path = route.partition(" ")
    return ApiError(200, f"unreadable answer: {problem}", method=method, path=path)


def metadata_copies(values: np.ndarray) -> np.ndarray:
    """Records' metadata as new dicts (None where unset): a result never shares dicts with
    its input."""
    copies = np.empty(len(values), dtype=object)
    if len(values) and not (values == None).all():  # noqa: E711 - elementwise, not identity
        copies[:] = [dict(m) if isinstance(m, dict) else None for m in values]
    return copies


def empty_annotation_frame(index: pd.Index | None = None) -> pd.DataFrame:
    """An annotation frame with no rows, with the right columns and dtypes."""
    return annotation_frame([], index=index)


def annotation_frame(
    objects: Sequence[dict[str, Any] | AnnotationObject],
    index: pd.Index | None = None,
    *,
    route: str = "",
) -> pd.DataFrame:
    """Annotation objects as answered by the API to an annotation frame.

    Parameters
    ----------
    objects : sequence of dict or AnnotationObject
        Annotation objects, as parsed from the API's JSON.
    index : pandas.Index, optional
        Index of the frame; default a ``RangeIndex``.
    route : str, optional
        The request that was answered with them, for errors (``"GET /..."``).

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
    as_dicts = not objects or isinstance(objects[0], dict)
    columns = {}
    for name in ANNOTATION_COLUMNS:
        key = _SOURCE.get(name, name)
        if as_dicts:
            # Plain dicts here (as_dicts), which the union of the argument's type hides.
            values = [obj.get(key) for obj in objects]  # type: ignore[union-attr]
        else:
            values = list(map(attrgetter(key), objects))
        if name in FLOAT_COLUMNS:
            values = [np.nan if v is None else v for v in values]
        columns[name] = column_series(name, values, index, route)
    return pd.DataFrame(columns, index=index)


def sort_annotations(frame: pd.DataFrame) -> pd.DataFrame:
    """An annotation frame's rows in the official SDK's order: by :data:`SORT_COLUMNS`
    (property names in text order), missing values last, ties kept in the order given;
    the index renumbered from 0."""
    ordered = frame.sort_values(list(SORT_COLUMNS), kind="stable", na_position="last")
    return ordered.reset_index(drop=True)


def fetch(
    samples: str | Sequence[str] | None = None,
    *,
    project: str | None = None,
    property_name: str | None = None,
    char_source_type: str | None = None,
    x_range: tuple[float | None, float | None] | None = None,
    y_range: tuple[float | None, float | None] | None = None,
    sort: bool = True,
    client: Any = None,
) -> pd.DataFrame:
    """The annotations of a sample (or of several, or of a project's) as an annotation
    frame.

    Parameters
    ----------
    samples : str or list of str, optional
        A sample by name (matched without case and surrounding blanks) or UUID, or a list
        of them. A list gives one frame of all of them, sample after sample in the order
        of their names, with the columns ``physical_sample_id`` and ``sample_name``.
    project : str, optional
        A project's name or UUID: every sample of the project (or, with ``samples``, the
        names looked up in it), as for a list.
    property_name, char_source_type : str, optional
        Keep only annotations of this property / technique.
    x_range, y_range : (float, float), optional
        Inclusive bounds; an axis is filtered only when both of its bounds are given.
    sort : bool, default True
        Order the rows as the official SDK's ``get_spatial_annotations`` does: by
        property name, then ``coord_x``, then ``coord_y`` (missing coordinates last).
        ``False`` keeps the order the server answered in.
    client : Client or SDK client, optional
        Default: a :class:`~atomscale_accessors.Client` configured from the environment.

    Returns
    -------
    pandas.DataFrame
        One row per annotation, indexed from 0 (an empty frame with the same columns for
        a sample without annotations). The columns and dtypes are those of an upload's
        result.

    Raises
    ------
    SampleNotFoundError, ProjectNotFoundError
        A name or UUID that matches no sample (project); nothing else was fetched.
    ApiError
        Any refusal that persists after the
        client's retries (429 and 5xx answers and failed connections are retried as
        its :class:`~atomscale_accessors.RetryPolicy` allows).
    TransportError
        The server could not be reached, or the answer did not arrive, after the retries.
    """
    from .samples import SampleResolver, samples_named

    resolved = resolve_client(client)
    filters = {
        "property_name": property_name,
        "char_source_type": char_source_type,
        "x_range": x_range,
        "y_range": y_range,
    }
    if isinstance(samples, str) and project is None:
        # A UUID is asked for as it is (404 when unknown); a name is looked up.
        sid = check_uuid(samples) if is_uuid(samples) else SampleResolver(resolved).resolve(samples)
        return _fetch_one(resolved, sid, filters, sort)
    if samples is None and project is None:
        raise TypeError("fetch() takes a sample, a list of samples, or project=")
    if not (samples is None or isinstance(samples, str) or _texts(samples)):
        shown = clip(samples, 80)
        raise InvalidIdentifierError(
            f"a sample is given by its name or UUID as a string (or a list of them), not {shown}"
        )
    names = samples_named(samples, project=project, client=resolved)
    frames = [
        _fetch_one(resolved, sid, filters, sort).assign(**{SAMPLE_NAME: name})
        for sid, name in names.items()
    ]
    if not frames:
        return annotation_frame([]).assign(**{SAMPLE_NAME: pd.Series(dtype=TEXT_DTYPE)})
    with warnings.catch_warnings():
        # Every frame has the same columns and dtypes: an all-NA column (no z, say) changes
        # nothing, which pandas 2.x warns about all the same.
        warnings.filterwarnings("ignore", "The behavior of DataFrame concatenation", FutureWarning)
        frame = pd.concat(frames, ignore_index=True)
    frame[SAMPLE_NAME] = categorical(frame[SAMPLE_NAME].to_numpy(dtype=object))
    return frame


def _texts(values: Any) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, bytes)
        and all(isinstance(v, str) for v in values)
    )


def _fetch_one(client: Any, sample_id: str, filters: dict[str, Any], sort: bool) -> pd.DataFrame:
    raw = client.list_annotations_raw(sample_id, **filters)
    route = f"GET /physical_samples/{sample_id}/annotations/"
    frame = annotation_frame(decode_annotations(raw, route), route=route)
    return sort_annotations(frame) if sort else frame
