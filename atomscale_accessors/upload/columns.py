"""Canonical records as arrays: float columns, text columns as codes into their few
distinct values, and metadata; the form every later step of an upload works on."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from ..keys import value_codes
from ..schemas import (
    FLOAT_COLUMNS,
    RECORD_COLUMNS,
    RECORD_STRING_COLUMNS,
    compact_records,
)

__all__ = [
    "Columns",
]

log = logging.getLogger(__name__)


class Columns:
    """Records as arrays: floats as float64 (NaN where unset), text as codes into the
    column's distinct values (-1 where unset), metadata as objects. Taking rows makes
    views (slices) or small copies, never a DataFrame."""

    __slots__ = ("codes", "floats", "metadata", "n", "values")

    def __init__(
        self,
        n: int,
        floats: dict[str, np.ndarray],
        codes: dict[str, np.ndarray],
        values: dict[str, np.ndarray],
        metadata: np.ndarray,
    ) -> None:
        self.n = n
        self.floats = floats
        self.codes = codes
        self.values = values
        self.metadata = metadata

    @classmethod
    def of(cls, records: pd.DataFrame) -> Columns:
        """The arrays of validated records (text columns made categoricals if they are not)."""
        records = compact_records(records)
        floats = {}
        for column in FLOAT_COLUMNS:
            series = records[column]
            floats[column] = (
                series.to_numpy()
                if series.dtype == np.float64
                else series.to_numpy(dtype="float64", na_value=np.nan)
            )
        codes, values = {}, {}
        for column in RECORD_STRING_COLUMNS:
            codes[column], uniques = value_codes(records[column])
            values[column] = np.asarray(uniques, dtype=object)
        metadata = records["metadata"].to_numpy(dtype=object)
        return cls(len(records), floats, codes, values, metadata)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice | np.ndarray) -> Columns:
        n = len(range(self.n)[rows]) if isinstance(rows, slice) else None
        metadata = self.metadata[rows]
        return Columns(
            n if n is not None else len(metadata),
            {c: v[rows] for c, v in self.floats.items()},
            {c: v[rows] for c, v in self.codes.items()},
            self.values,
            metadata,
        )

    def text(self, column: str) -> np.ndarray:
        """A text column as objects, None where unset."""
        table = np.concatenate([self.values[column], np.array([None], dtype=object)])
        return table[self.codes[column]]

    def constant(self, column: str) -> tuple[bool, Any]:
        """Whether a text column holds one value on every row (None: unset on every row),
        and the value."""
        codes = self.codes[column]
        if not self.n:
            return True, None
        first = int(codes[0])
        if not (codes == first).all():
            return False, None
        return True, (None if first < 0 else self.values[column][first])

    def frame(self, index: pd.Index) -> pd.DataFrame:
        """The records as a DataFrame (text columns categorical)."""
        columns: dict[str, Any] = {}
        for column in RECORD_COLUMNS:
            if column in self.floats:
                columns[column] = self.floats[column]
            elif column == "metadata":
                columns[column] = self.metadata
            else:
                columns[column] = pd.Categorical.from_codes(
                    self.codes[column], pd.Index(self.values[column], dtype=object)
                )
        return pd.DataFrame(columns, index=index)
