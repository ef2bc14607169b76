"""Annotation frames built in place: the result of an upload, filled by input position,
chunk by chunk, from any thread, with its columns allocated once.

Also the two conversions every answer goes through on the way in: times to int64 ticks
(:func:`parse_times`) and repeated text to codes (:func:`text_codes`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from .frames import (
    REPEATED_TEXT_COLUMNS,
    TEXT_DTYPE,
    TIME_UNIT,
    column_series,
    sorted_categorical,
    text_categories,
)
from .schemas import ANNOTATION_COLUMNS, FLOAT_COLUMNS

__all__ = ["FrameBuilder", "parse_times", "text_codes"]

# Text columns written per row (physical_sample_id is one value, set at the end).
_CODED_COLUMNS = tuple(c for c in REPEATED_TEXT_COLUMNS if c != "physical_sample_id")
# Whether pandas' default text dtype keeps its data in Arrow buffers (pandas 3 with pyarrow):
# then ids of one width are kept as fixed-width bytes and handed over without a copy.
_ARROW_TEXT = isinstance(TEXT_DTYPE, pd.StringDtype) and TEXT_DTYPE.storage == "pyarrow"
_NAT = np.iinfo(np.int64).min


def parse_times(values: list[Any], route: str = "") -> np.ndarray:
    """ISO 8601 timestamps (naive ones read as UTC) as int64 in the frames' unit, NaT for
    None. Each distinct text is parsed once: a bulk answer repeats one or a few times.
    ``route`` names the request they answer, for errors."""
    if len(values) and values.count(values[0]) == len(values):  # one time: no hashing
        return np.full(len(values), _ticks([values[0]], route)[0], dtype=np.int64)
    distinct = dict.fromkeys(values)
    ticks = _ticks(list(distinct), route)
    lookup = dict(zip(distinct, ticks.tolist(), strict=True))
    return np.fromiter(map(lookup.__getitem__, values), dtype=np.int64, count=len(values))


def text_codes(values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Codes (-1 for None) and distinct values of a list of repeated values."""
    if len(values) and values[0] is not None and values.count(values[0]) == len(values):
        return np.zeros(len(values), dtype=np.int8), [values[0]]
    distinct = dict.fromkeys(values)
    distinct.pop(None, None)
    if len(distinct) == 1 and None not in values:
        return np.zeros(len(values), dtype=np.int8), list(distinct)
    lookup: dict[Any, int] = {v: i for i, v in enumerate(distinct)}
    lookup[None] = -1
    return (
        np.fromiter(map(lookup.__getitem__, values), dtype=np.int32, count=len(values)),
        list(distinct),
    )


def _ticks(texts: list[Any], route: str = "") -> np.ndarray:
    """Timestamps as int64 ticks of the frames' unit; the usual form without pandas."""
    if (
        len(texts) == 1
        and _TICKS_PER_MICROSECOND
        and isinstance(texts[0], str)
        and _PLAIN_TIME.fullmatch(texts[0])
    ):
        moment = datetime.fromisoformat(texts[0])
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # naive times are UTC
        micros = (moment - _EPOCH) // timedelta(microseconds=1)
        return np.array([micros * _TICKS_PER_MICROSECOND], dtype=np.int64)
    parsed = column_series("last_updated", texts, pd.RangeIndex(len(texts)), route)
    return parsed.array.asi8 if len(texts) else np.empty(0, dtype=np.int64)


# ISO 8601 with at most microseconds, which datetime reads exactly as pandas does.
_PLAIN_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)?", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICKS_PER_MICROSECOND = {"us": 1, "ns": 1000}.get(TIME_UNIT, 0)


class FrameBuilder:
    """An annotation frame filled in by input position, chunk by chunk, from any thread.

    Every column is allocated once in its final dtype, for ``capacity`` rows (grown when a
    position beyond arrives), and each chunk writes its rows in place: the frame never
    exists twice, as pieces and joined. Text columns hold codes into the values seen so far
    (they become categoricals); ids of one width (UUIDs) are held as fixed-width bytes and
    become an Arrow-backed text column without a copy, when that is pandas' text dtype.

    Parameters
    ----------
    sample_id : str
        The sample, for the ``physical_sample_id`` column.
    capacity : int, optional
        How many input positions there are, when known.
    index : pandas.Index, optional
        The labels of every input position, when they are at hand; otherwise each
        :meth:`put` brings the labels of its rows.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from atomscale_accessors.frame_builder import FrameBuilder
    >>> builder = FrameBuilder("a1b2c3d4-5678-90ab-cdef-1234567890ab", capacity=3)
    >>> builder.put(
    ...     np.array([2, 0]),
    ...     floats={"property_value": np.array([3.0, 1.0])},
    ...     texts={"property_name": (np.array([0, 0]), ["thickness"])},
    ...     ids=["0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a12", "0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a10"],
    ...     times=np.zeros(2, dtype=np.int64),
    ...     index=pd.Index(["c", "a"]),
    ... )
    >>> builder.frame()[["property_name", "property_value"]]
      property_name  property_value
    a     thickness             1.0
    c     thickness             3.0
    """

    def __init__(
        self, sample_id: str, capacity: int | None = None, index: pd.Index | None = None
    ) -> None:
        self.sample_id = sample_id
        self._index = index
        # The labels of each put, with its positions (a slice when consecutive: a slice
        # does not hold on to the chunk's array of positions).
        self._index_parts: list[tuple[np.ndarray | slice, pd.Index]] = []
        self._lock = threading.Lock()
        self._size = 0
        self._end = 0  # one past the highest position written
        self._known = capacity is not None
        self._filled = np.zeros(0, dtype=bool)
        # A float column, or the metadata, is allocated when a row first sets it (None
        # until then): a map's coord_z and metadata are usually never set.
        self._floats: dict[str, np.ndarray | None] = dict.fromkeys(FLOAT_COLUMNS)
        self._codes = {name: np.empty(0, dtype=np.int8) for name in _CODED_COLUMNS}
        self._values: dict[str, dict[str, int]] = {name: {} for name in _CODED_COLUMNS}
        self._metadata: np.ndarray | None = None
        self._times = np.empty(0, dtype=np.int64)
        # Ids as rows of fixed-width bytes (width 0: none put yet), or as text objects.
        self._id_as_bytes = _ARROW_TEXT
        self._width = 0
        self._id_bytes = np.empty((0, 0), dtype=np.uint8)
        self._id_objects = np.empty(0, dtype=object)
        self._grow(capacity or 0)

    def __len__(self) -> int:
        return int(self._filled[: self._end].sum())

    def _grow(self, size: int) -> None:
        if size <= self._size:
            return
        if self._size:  # positions beyond a known capacity, or none known: double
            size = max(size, 2 * self._size)

        def grown(old: np.ndarray, fill: Any) -> np.ndarray:
            new = np.empty((size, *old.shape[1:]), dtype=old.dtype)
            new[: self._size] = old
            if fill is not None:
                new[self._size :] = fill
            return new

        self._filled = grown(self._filled, False)
        self._floats = {
            name: None if column is None else grown(column, np.nan)
            for name, column in self._floats.items()
        }
        self._codes = {name: grown(codes, -1) for name, codes in self._codes.items()}
        if self._metadata is not None:
            self._metadata = grown(self._metadata, None)
        self._times = grown(self._times, _NAT)
        if not self._id_as_bytes:
            self._id_objects = grown(self._id_objects, None)
        elif self._width:
            self._id_bytes = grown(self._id_bytes, 0)
        self._size = size

    def put(
        self,
        positions: np.ndarray,
        *,
        floats: dict[str, np.ndarray],
        texts: dict[str, tuple[np.ndarray, Sequence[Any] | pd.Index]],
        ids: Sequence[str],
        times: np.ndarray,
        metadata: np.ndarray | None = None,
        index: pd.Index | None = None,
    ) -> None:
        """Write rows at input ``positions``: float columns, text columns as (codes, values)
        with -1 for unset, ids, ``last_updated`` as int64 ticks (see :func:`parse_times`),
        metadata objects, and the rows' labels (when the builder has no index). Columns not
        given are unset."""
        n = len(positions)
        if not n:
            return
        first, last = int(positions[0]), int(positions[-1])
        at: np.ndarray | slice = positions
        if last - first == n - 1 and (n < 2 or bool((np.diff(positions) == 1).all())):
            at = slice(first, last + 1)  # consecutive rows (the usual chunk): plain copies
        top = last + 1 if isinstance(at, slice) else int(positions.max()) + 1
        if self._index is None and (index is None or len(index) != n):
            raise ValueError("each put needs the labels of its rows")
        with self._lock:
            self._grow(top)
            self._put_ids(at, ids)  # first: it may have to read the rows written before
            self._end = max(self._end, top)
            self._filled[at] = True
            self._put_columns(at, floats, texts, metadata)
            self._times[at] = times
            if self._index is None:
                if index is None:
                    raise TypeError("put() needs the rows' labels: the builder has no index")
                self._index_parts.append((at, index))

    def _put_columns(
        self,
        at: np.ndarray | slice,
        floats: dict[str, np.ndarray],
        texts: dict[str, tuple[np.ndarray, Sequence[Any] | pd.Index]],
        metadata: np.ndarray | None,
    ) -> None:
        for name in FLOAT_COLUMNS:
            numbers = floats.get(name)
            if numbers is None:
                continue
            column = self._floats[name]
            if column is None:
                if np.isnan(numbers).all():
                    continue  # unset, as the whole column is so far
                column = self._floats[name] = np.full(self._size, np.nan)
            column[at] = numbers
        for name in _CODED_COLUMNS:
            if name in texts:
                codes, values = texts[name]
                self._codes[name][at] = self._recode(name, codes, values)
        if metadata is not None and (
            self._metadata is not None or metadata.tolist().count(None) < len(metadata)
        ):
            if self._metadata is None:
                self._metadata = np.empty(self._size, dtype=object)  # None in every row
            self._metadata[at] = metadata

    def _recode(self, name: str, codes: np.ndarray, values: Sequence[Any] | pd.Index) -> np.ndarray:
        """A chunk's codes as codes into the column's values (text: 1 and "1" are one)."""
        known = self._values[name]
        table = np.empty(len(values) + 1, dtype=np.int32)
        table[-1] = -1  # code -1 (unset) picks the last entry
        for i, value in enumerate(values):
            table[i] = known.setdefault(value if isinstance(value, str) else str(value), len(known))
        limit = np.iinfo(self._codes[name].dtype).max
        if len(known) > limit:  # more distinct values than the codes' dtype holds
            wider = np.int16 if len(known) <= np.iinfo(np.int16).max else np.int32
            self._codes[name] = self._codes[name].astype(wider)
        return table[codes]

    def _put_ids(self, positions: np.ndarray | slice, ids: Sequence[str]) -> None:
        if self._id_as_bytes:
            joined = "".join(ids)
            width = self._width or len(ids[0])
            # Every id has the width when the lengths add up and none is shorter.
            if (
                width
                and joined.isascii()
                and len(joined) == width * len(ids)
                and min(map(len, ids)) == width
            ):
                if not self._width:
                    self._width = width
                    self._id_bytes = np.zeros((self._size, width), dtype=np.uint8)
                rows = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
                self._id_bytes[positions] = rows.reshape(len(ids), width)
                return
            # Ids of several widths (or not ASCII): held as text objects from now on.
            self._id_objects = np.empty(self._size, dtype=object)
            if self._width:
                held = np.flatnonzero(self._filled)
                self._id_objects[held] = [bytes(r).decode("ascii") for r in self._id_bytes[held]]
            self._id_as_bytes, self._id_bytes = False, np.empty((0, 0), dtype=np.uint8)
        self._id_objects[positions] = np.asarray(ids, dtype=object)

    def written(self, positions: np.ndarray) -> np.ndarray:
        """For each input position, whether a row was written at it."""
        with self._lock:
            inside = positions < self._size
            return inside & self._filled[np.where(inside, positions, 0)]

    def ids_at(self, positions: np.ndarray) -> list[str]:
        """The ids written at input positions."""
        with self._lock:
            if not self._id_as_bytes:
                return self._id_objects[positions].tolist()
            rows = np.ascontiguousarray(self._id_bytes[positions])
            return [bytes(row).decode("ascii") for row in rows]

    def frame(self) -> pd.DataFrame:
        """The annotation frame of every row written, in input order."""
        with self._lock:
            end = self._size if self._known else self._end
            filled = self._filled[:end]
            rows: np.ndarray | slice = slice(0, end) if filled.all() else np.flatnonzero(filled)
            stamps = self._stamps(rows, end)
            index = self._frame_index(rows)
            n = len(index)
            columns: dict[str, Any] = {
                "annotation_id": self._idscolumn_series(rows, n),
                "last_updated": stamps,
                **self._other_columns(rows, n),
                # As a Series of object dtype: a bare object array would have pandas try
                # to infer a type for it, with temporary arrays of twice its size.
                "metadata": pd.Series(
                    np.empty(n, dtype=object) if self._metadata is None else self._metadata[rows],
                    index=index,
                    dtype=object,
                    copy=False,
                ),
            }
        # From the arrays: a Series for each column first costs about a third more.
        return pd.DataFrame(
            {name: columns[name] for name in ANNOTATION_COLUMNS}, index=index, copy=False
        )

    def _stamps(self, rows: np.ndarray | slice, end: int) -> Any:
        """The times as a time-zone aware array. It is a copy, made before the other
        columns; when it has every row, the builder holds it instead of its own, so the
        two do not stay side by side while the rest of the frame is made."""
        times = pd.Series(self._times[rows].view(f"M8[{TIME_UNIT}]"), copy=False)
        stamps = times.dt.tz_localize("UTC").array
        if isinstance(rows, slice) and end == self._size:
            # (the int64 view of its data, which pandas-stubs leave out)
            self._times = stamps.asi8  # type: ignore[attr-defined]
        return stamps

    def _frame_index(self, rows: np.ndarray | slice) -> pd.Index:
        if self._index is not None:
            return self._index[rows]
        parts = sorted(self._index_parts, key=lambda part: _first(part[0]))
        if not parts:
            return pd.RangeIndex(0)
        labels = parts[0][1].append([labels for _, labels in parts[1:]])
        wheres = [where for where, _ in parts]
        if all(isinstance(where, slice) for where in wheres) and all(
            _first(later) >= _first(earlier) + len(part)
            for (earlier, part), later in zip(parts, wheres[1:], strict=False)
        ):  # runs of positions one after the other: in order as they are
            start = _first(wheres[0])
            if _first(wheres[-1]) + len(parts[-1][1]) == start + len(labels):
                # No gap between them: kept as one part from now on, so that the pieces
                # are not held beside the whole.
                self._index_parts = [(slice(start, start + len(labels)), labels)]
            return labels
        positions = np.concatenate(
            [np.arange(w.start, w.stop) if isinstance(w, slice) else w for w in wheres]
        )
        if (positions[1:] < positions[:-1]).any():
            labels = labels[np.argsort(positions, kind="stable")]
        return labels

    def _other_columns(self, rows: np.ndarray | slice, n: int) -> dict[str, Any]:
        """The text columns as categoricals, the floats (NaN where never set), and the
        sample's id."""
        columns: dict[str, Any] = {
            name: self.categorical(name, self._codes[name][rows]) for name in _CODED_COLUMNS
        }
        for name, column in self._floats.items():
            columns[name] = np.full(n, np.nan) if column is None else column[rows]
        columns["physical_sample_id"] = pd.Categorical.from_codes(
            np.zeros(n, dtype=np.int8), dtype=text_categories([self.sample_id])
        )
        return columns

    def categorical(self, name: str, codes: np.ndarray) -> pd.Categorical:
        categorical = sorted_categorical(codes, list(self._values[name]))
        # Values of rows that were not created (or of a chunk's other rows) are not kept.
        if _has_unused(categorical):
            categorical = categorical.remove_unused_categories()
        return categorical

    def _idscolumn_series(self, rows: np.ndarray | slice, n: int) -> Any:
        if not self._id_as_bytes:
            return pd.array(self._id_objects[rows], dtype=TEXT_DTYPE)
        if not self._width:  # nothing was put
            return pd.array(np.empty(n, dtype=object), dtype=TEXT_DTYPE)
        import pyarrow as pa

        data = np.ascontiguousarray(self._id_bytes[rows])
        width = self._width
        offsets = np.arange(0, width * (n + 1), width, dtype=np.int64)
        array = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
        return TEXT_DTYPE.construct_array_type()(pa.chunked_array([array]), dtype=TEXT_DTYPE)


def _has_unused(categorical: pd.Categorical) -> bool:
    """Whether a category is used by no row. With a few categories, one comparison each:
    counting the codes would first widen them all to 64 bits."""
    codes, k = categorical.codes, len(categorical.categories)
    if k <= 8:
        return any(not (codes == code).any() for code in range(k))
    counts = np.bincount(codes + 1, minlength=k + 1)
    return bool((counts[1:] == 0).any())


def _first(where: np.ndarray | slice) -> int:
    return int(where.start) if isinstance(where, slice) else int(where[0])
