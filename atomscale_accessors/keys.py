"""What "the same record" means: the position key and its one hash, keys as joinable
arrays, matching records to stored annotations by content, and the box that holds a set of
records."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .fields import FLOAT_COLUMNS, POSITION_KEY

if TYPE_CHECKING:
    from .upload.answers import Answer
    from .upload.columns import Columns

__all__ = [
    "MATCH_KEY",
    "NULL_TEXT",
    "Box",
    "bounding_box",
    "box_filters",
    "joinable",
    "key_dtype",
    "key_frame",
    "listing_filters",
    "match",
    "position_hashes",
    "record_keys",
    "records_key_frame",
    "repeated_positions",
    "same_content",
    "value_codes",
]

#: Stands for "unset" in text keys, where NaN and None must agree.
NULL_TEXT = "\x00"
#: Two records are the same when these agree: the position key and the value.
MATCH_KEY = (*POSITION_KEY, "property_value")
#: Where a set of records lies: ``(x_min, x_max, y_min, y_max)``, inclusive.
Box = tuple[float, float, float, float]


def key_dtype(column: str) -> str:
    return "float64" if column in FLOAT_COLUMNS else "object"


def record_keys(columns: Columns) -> dict[str, np.ndarray]:
    """The key columns of records as arrays, text nulls as None like in an answer."""
    return {
        column: columns.floats[column] if column in FLOAT_COLUMNS else columns.text(column)
        for column in MATCH_KEY
    }


def key_frame(
    keys: dict[str, np.ndarray], columns: tuple[str, ...] = MATCH_KEY, *, count: bool = True
) -> pd.DataFrame:
    """Key columns ready to join on (text nulls as one marker, so NaN and None agree), with
    an occurrence counter ``_n`` that pairs repeated keys one to one."""
    frame = pd.DataFrame({column: joinable(column, keys[column]) for column in columns})
    if count:
        frame["_n"] = frame.groupby(list(columns), dropna=False, sort=False).cumcount().to_numpy()
    return frame


def records_key_frame(
    records: pd.DataFrame, columns: tuple[str, ...] = POSITION_KEY
) -> pd.DataFrame:
    """The key columns of a records frame, ready to join or group on (no counter)."""
    # pandas accepts na_value=None, which pandas-stubs leave out of the scalars it allows.
    keys = {
        column: records[column].to_numpy(dtype=key_dtype(column), na_value=None)  # type: ignore[call-overload]
        if column not in FLOAT_COLUMNS
        else records[column].to_numpy(dtype="float64", na_value=np.nan)
        for column in columns
    }
    return key_frame(keys, columns, count=False)


def joinable(column: str, values: np.ndarray) -> np.ndarray:
    return values if column in FLOAT_COLUMNS else np.where(pd.isna(values), NULL_TEXT, values)


def match(
    records: Columns,
    answer: Answer,
    key: tuple[str, ...] = MATCH_KEY,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair records with answered annotations of the same content (by default the position
    key and the value; with ``key=POSITION_KEY``, the position alone), one to one.

    Returns, for each record, the position of its annotation in the answer (or -1), and for
    each annotation whether it was paired.
    """
    if len(records) == 0 or len(answer) == 0:
        return np.full(len(records), -1, dtype=np.int64), np.zeros(len(answer), dtype=bool)
    mine = record_keys(records)
    if len(records) == len(answer) and same_content(mine, answer.keys, key):
        # The usual answer: the same records in the same order. Every key field was
        # compared, so this is still a match by content; any difference takes the join.
        return np.arange(len(records), dtype=np.int64), np.ones(len(answer), dtype=bool)
    left = key_frame(mine, key)
    left["_left"] = np.arange(len(records))
    right = key_frame(answer.keys, key)
    right["_right"] = np.arange(len(answer))
    merged = left.merge(right, on=[*key, "_n"], how="inner")
    paired = np.full(len(records), -1, dtype=np.int64)
    paired[merged["_left"].to_numpy()] = merged["_right"].to_numpy()
    used = np.zeros(len(answer), dtype=bool)
    used[merged["_right"].to_numpy()] = True
    return paired, used


def same_content(
    mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray], key: tuple[str, ...]
) -> bool:
    """Whether row i of one set of key columns equals row i of the other, for every i."""
    for column in key:
        a, b = mine[column], theirs[column]
        if column in FLOAT_COLUMNS:
            if not np.array_equal(a, b, equal_nan=True):
                return False
        elif not np.array_equal(joinable(column, a), joinable(column, b)):
            return False
    return True


def listing_filters(columns: Columns) -> dict[str, Any]:
    """List filters covering records (inclusive): their property, when they have one, and
    their bounding box, when every record has x and y."""
    filters: dict[str, Any] = {}
    one, name = columns.constant("property_name")
    if one:
        filters["property_name"] = name
    filters.update(
        box_filters([bounding_box(columns.floats["coord_x"], columns.floats["coord_y"])])
    )
    return filters


def bounding_box(xs: ArrayLike, ys: ArrayLike) -> Box | None:
    """The box of some positions; ``None`` when there are none, or some lack x or y (a
    listing must then take every position)."""
    xs = np.asarray(xs, dtype="float64")
    ys = np.asarray(ys, dtype="float64")
    if len(xs) == 0 or np.isnan(xs).any() or np.isnan(ys).any():
        return None
    return float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())


def box_filters(boxes: Iterable[Box | None]) -> dict[str, tuple[float, float]]:
    """The ``x_range`` and ``y_range`` list filters of the box holding every given box;
    no filter when there is no box, or one of them is ``None``."""
    corners = list(boxes)
    if not corners or any(box is None for box in corners):
        return {}
    every = np.array(corners, dtype="float64")
    return {
        "x_range": (float(every[:, 0].min()), float(every[:, 1].max())),
        "y_range": (float(every[:, 2].min()), float(every[:, 3].max())),
    }


# -- one hash of the position key -----------------------------------------------------------
def value_codes(values: pd.Series) -> tuple[np.ndarray, Any]:
    """Codes of a column's distinct values (-1 where missing), and the values: a
    categorical's own, else hashed (``TypeError`` for values that cannot be)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categorical = values.array  # its own arrays: ``.cat.codes`` would build a Series
        return categorical.codes, categorical.categories
    return pd.factorize(values.to_numpy(dtype=object), use_na_sentinel=True)


def position_hashes(records: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each record's position key (``POSITION_KEY``).

    Positions the upload takes for one hash alike: -0.0 as 0.0, every NaN as one NaN,
    every unset text as one. The hash does not depend on the frame (text is hashed by
    value, not by its code in one frame), so hashes of two partitions, computed in two
    processes, compare. Equal hashes are candidates only: compare the records before
    deciding anything. Raises ``TypeError`` or ``UnicodeEncodeError`` for text columns
    holding what is not text.
    """
    mixed = np.zeros(len(records), dtype=np.uint64)
    for column in POSITION_KEY:
        mixed = (mixed ^ _column_hashes(records[column], column)) * _MIX
        mixed ^= mixed >> np.uint64(29)
    return mixed


def _column_hashes(values: pd.Series, column: str) -> np.ndarray:
    if column in FLOAT_COLUMNS:
        floats = values.to_numpy(dtype="float64", na_value=np.nan)
        # One bit pattern per value: every NaN alike, and -0.0 + 0.0 is 0.0.
        return np.where(np.isnan(floats), np.nan, floats + 0.0).view(np.uint64)
    codes, distinct = value_codes(values)
    # Each distinct value hashed once; the last entry stands for "unset" (code -1).
    hashed = pd.util.hash_array(np.append(np.asarray(distinct, dtype=object), NULL_TEXT))
    return hashed[codes]


def repeated_positions(records: pd.DataFrame, groups: np.ndarray | None = None) -> np.ndarray:
    """For each record, whether another record has the same property at the same position
    (the columns of ``POSITION_KEY``; NaN equals NaN there, and -0.0 equals 0.0), and,
    with ``groups`` (one integer per record, a sample's say), in the same group.

    One hashing pass finds the candidates; only rows whose hash repeats are compared
    exactly.
    """
    n = len(records)
    try:
        hashes = position_hashes(records)
    except (TypeError, UnicodeEncodeError):  # not text: the text checks report those rows
        return np.zeros(n, dtype=bool)
    if groups is not None:
        hashes = (hashes ^ np.asarray(groups, dtype=np.int64).view(np.uint64)) * _MIX
    candidates = np.flatnonzero(pd.Series(hashes).duplicated(keep=False).to_numpy())
    repeated = np.zeros(n, dtype=bool)
    if len(candidates):
        subset = records.iloc[candidates][list(POSITION_KEY)]
        if groups is not None:
            subset = subset.assign(_group=np.asarray(groups)[candidates])
        repeated[candidates] = subset.duplicated(keep=False).to_numpy()
    return repeated


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it loses no bits
