"""What "the same record" means: the position key, keys as joinable arrays, matching
records to stored annotations by content, and the box that holds a set of records."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .schemas import FLOAT_COLUMNS, POSITION_KEY

if TYPE_CHECKING:
    from .upload.answers import Answer
    from .upload.columns import Columns

__all__ = [
    "MATCH_KEY",
    "NULL_TEXT",
    "joinable",
    "key_dtype",
    "key_frame",
    "listing_filters",
    "match",
    "record_keys",
    "same_content",
]

#: Stands for "unset" in text keys, where NaN and None must agree.
NULL_TEXT = "\x00"
#: Two records are the same when these agree: the position key and the value.
MATCH_KEY = (*POSITION_KEY, "property_value")


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


def listing_filters(columns: Columns, *, with_name: bool = True) -> dict[str, Any]:
    """List filters covering records (inclusive): their property, when they have one, and
    their bounding box, when every record has x and y."""
    filters: dict[str, Any] = {}
    one, name = columns.constant("property_name")
    if one and with_name:
        filters["property_name"] = name
    xs, ys = columns.floats["coord_x"], columns.floats["coord_y"]
    if len(columns) and not (np.isnan(xs).any() or np.isnan(ys).any()):
        filters["x_range"] = (float(xs.min()), float(xs.max()))
        filters["y_range"] = (float(ys.min()), float(ys.max()))
    return filters
