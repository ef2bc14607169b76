"""Cells of a user's frame as record values: numbers as exact float64, metadata as plain data.

Only lossless conversions happen here (integers to floats, float32 to float64); a cell that
is not a number, or an integer float64 cannot hold exactly, is reported to the caller (a
:class:`Reporter`, the records builder) and its row marked unread.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .failures import quote

__all__ = ["Reporter", "is_missing", "plain", "to_float"]

# Integers beyond 2**53 do not all have an exact float64; converting them would change data.
_MAX_EXACT_INT = 2**53


class Reporter(Protocol):
    """Where :func:`to_float` reports the cells it cannot convert.

    Attributes
    ----------
    unread : dict
        Rows whose cell of a number column could not be read, per column (boolean masks
        over the column's rows).
    """

    unread: dict[Hashable, np.ndarray]

    def problem(
        self,
        message: str,
        index: Any,
        column: Any,
        check: str,
        case: Any,
        *,
        many: pd.Index | None = None,
        cases: Any = None,
        soft: bool = False,
    ) -> None:
        """Record one problem: its reason, and its failure cases (one, or ``many`` rows)."""


def to_float(col: pd.Series, key: Hashable, reporter: Reporter) -> pd.Series:
    """A number column as float64 (NaN where missing).

    Parameters
    ----------
    col : pandas.Series
        The column, of any dtype.
    key : hashable
        Its name, as the failures and the reasons name it.
    reporter : Reporter
        Told of the cells that are not numbers, or not exactly float64; their rows are
        marked in ``reporter.unread[key]``.

    Returns
    -------
    pandas.Series
        The values as float64, on the column's index; NaN where a cell could not be read.
    """
    dtype = col.dtype
    if pd.api.types.is_float_dtype(dtype):
        return col.astype("float64") if dtype != np.float64 else col
    everything = np.ones(len(col), dtype=bool)
    if pd.api.types.is_bool_dtype(dtype):
        reporter.problem(
            f"column {quote(key)} holds booleans, not numbers",
            None,
            key,
            "is_number",
            None,
            many=col.index,
            cases=col,
            soft=True,
        )
        reporter.unread[key] = everything
        return pd.Series(np.nan, index=col.index)
    if pd.api.types.is_integer_dtype(dtype):
        too_big = (col.abs() > _MAX_EXACT_INT).to_numpy(dtype=bool, na_value=False)
        _not_exact(reporter, col, key, too_big)
        return pd.Series(col.to_numpy(dtype="float64", na_value=np.nan), index=col.index)
    if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        is_num = col.map(
            lambda v: (
                isinstance(v, int | float | np.integer | np.floating)
                and not isinstance(v, bool | np.bool_)
            ),
            na_action="ignore",
        ).astype(bool)
        bad = (col.notna() & ~is_num).to_numpy()
        if bad.any():
            reporter.problem(
                f"column {quote(key)} holds values that are not numbers (text is never converted)",
                None,
                key,
                "is_number",
                None,
                many=col.index[bad],
                cases=col[bad],
                soft=True,
            )
        numbers = col.where(is_num)
        too_big = numbers.map(
            lambda v: isinstance(v, int | np.integer) and abs(int(v)) > _MAX_EXACT_INT,
            na_action="ignore",
        ).to_numpy(dtype=bool, na_value=False)
        _not_exact(reporter, col, key, too_big)
        if bad.any() or too_big.any():
            reporter.unread[key] = bad | too_big
        return pd.Series(numbers.to_numpy(dtype="float64", na_value=np.nan), index=col.index)
    reporter.problem(
        f"column {quote(key)} has dtype {dtype}, not a number",
        None,
        key,
        "is_number",
        str(dtype),
        soft=True,
    )
    reporter.unread[key] = everything
    return pd.Series(np.nan, index=col.index)


def _not_exact(reporter: Reporter, col: pd.Series, key: Hashable, too_big: np.ndarray) -> None:
    if too_big.any():
        reporter.problem(
            f"column {quote(key)} holds integers beyond 2**53 that float64 cannot represent "
            "exactly",
            None,
            key,
            "exact_float",
            None,
            many=col.index[too_big],
            cases=col[too_big],
            soft=True,
        )
        reporter.unread[key] = too_big | reporter.unread.get(key, False)


def plain(value: Any) -> Any:
    """A cell as plain Python data: numpy scalars as Python ones, NaN as ``None``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def is_missing(value: Any) -> bool:
    """Whether a cell is missing: ``None`` or a float NaN."""
    return value is None or (isinstance(value, float) and value != value)
