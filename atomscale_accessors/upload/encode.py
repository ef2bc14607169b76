"""Request bodies: records encoded to JSON once, cut into bodies without encoding again."""

from __future__ import annotations

import functools
import logging
from json.encoder import encode_basestring_ascii
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from ..schemas import (
    COORD_COLUMNS,
    RECORD_COLUMNS,
    encode_metadata,
)
from .columns import Columns

__all__ = [
    "BODY_OVERHEAD",
    "ENCODER",
    "EncodedRecords",
    "column_tokens",
    "float_tokens",
]

log = logging.getLogger(__name__)


ENCODER = msgspec.json.Encoder()


class EncodedRecords:
    """Records as columns of JSON tokens, from which request bodies are joined.

    Floats are written with their shortest round-trip text (exact, as ``repr`` writes
    them), unset cells as ``null`` (NaN never reaches the JSON), text ASCII-escaped. A
    column unset on every row is left out; a column with one value on every row is encoded
    once, and other text columns once per distinct value. A body is one ``str.join`` over
    the interleaved tokens: no per-record dict or string is built.

    Examples
    --------
    >>> import pandas as pd
    >>> from atomscale_accessors.upload import EncodedRecords
    >>> rec = pd.DataFrame(
    ...     {
    ...         "property_name": ["thickness"] * 2,
    ...         "property_value": [0.1, 2.0],
    ...         "property_unit": ["nm"] * 2,
    ...         "char_source_type": [None] * 2,
    ...         "coord_ref_frame": ["sample_relative"] * 2,
    ...         "coord_units": ["mm"] * 2,
    ...         "coord_x": [1.5, 3.0],
    ...         "coord_y": [2.0, 2.0],
    ...         "coord_z": [float("nan")] * 2,
    ...         "data_id": [None] * 2,
    ...         "metadata": [None, {"site": 7}],
    ...     }
    ... )
    >>> EncodedRecords(rec).body(slice(1, 2)).decode()
    '{"annotations":[{"property_name":"thickness","property_value":2.0,"property_unit":"nm","coord_ref_frame":"sample_relative","coord_units":"mm","coord_x":3.0,"coord_y":2.0,"metadata":{"site":7}}]}'
    """

    def __init__(self, records: pd.DataFrame | Columns) -> None:
        columns = records if isinstance(records, Columns) else Columns.of(records)
        self.n = len(columns)
        # Between varying columns: constant text (keys, constant fields). Row i's JSON is
        # glue[0] + tokens[0][i] + glue[1] + ... + tokens[-1][i] + glue[-1].
        self.glue: list[str] = []
        self.tokens: list[list[str]] = []
        # Each varying column's token lengths, or (floats) the joined text they come from.
        self._lengths: list[np.ndarray | str] = []
        self.total = 0  # bytes of all rows' JSON
        pending = "{"
        for column in RECORD_COLUMNS:
            tokens, lengths = column_tokens(columns, column)
            if tokens is None:
                continue
            key = f'"{column}":'
            pending += ("" if pending == "{" else ",") + key
            if isinstance(tokens, str):
                pending += tokens
                continue
            self.glue.append(pending)
            self.tokens.append(tokens)
            self._lengths.append(lengths)
            self.total += (
                len(lengths) - (self.n - 1) if isinstance(lengths, str) else int(lengths.sum())
            )
            pending = ""
        self.glue.append(pending + "}")
        self.total += self.n * sum(len(g) for g in self.glue)

    @functools.cached_property
    def sizes(self) -> np.ndarray:
        """Bytes of each row's JSON."""
        sizes = np.full(self.n, sum(len(g) for g in self.glue), dtype=np.int64)
        for lengths in self._lengths:
            if isinstance(lengths, str):
                # Token lengths from where the commas are, without measuring each token.
                commas = np.flatnonzero(np.frombuffer(lengths.encode(), dtype=np.uint8) == 44)
                lengths = np.diff(np.append(commas, len(lengths)), prepend=-1) - 1
            sizes += lengths
        return sizes

    def body(self, rows: slice) -> bytes:
        """The ``{"annotations": [...]}`` body of a range of rows."""
        n = len(range(self.n)[rows])
        if not n:
            return b'{"annotations":[]}'
        # The pieces row by row, filled one column at a time by strided list assignment.
        width = 2 * len(self.tokens) + 1
        pieces = [""] * (n * width)
        for i, glue in enumerate(self.glue[:-1]):
            pieces[2 * i :: width] = [glue] * n
        for i, tokens in enumerate(self.tokens):
            pieces[2 * i + 1 :: width] = tokens[rows]
        pieces[width - 1 :: width] = [self.glue[-1] + ","] * n  # rows are separated by commas
        pieces[-1] = self.glue[-1]
        return ('{"annotations":[' + "".join(pieces) + "]}").encode("ascii")


def column_tokens(columns: Columns, column: str) -> tuple[str | list[str] | None, Any]:
    """JSON tokens of a column and their lengths: (None, 0) when unset on every row, one
    token when the same on every row, else a list of tokens (with, for floats, their
    comma-joined text in place of the lengths)."""
    if column in columns.floats:
        return _float_column_tokens(columns, column)
    if column == "metadata":
        return _metadata_tokens(columns)
    same, value = columns.constant(column)
    if same:
        return (None, 0) if value is None else (encode_basestring_ascii(value), 0)
    # Each distinct value encoded once; rows pick theirs (the last entry is "unset").
    table = np.array([*map(encode_basestring_ascii, columns.values[column]), "null"], dtype=object)
    sizes = np.fromiter(map(len, table), dtype=np.int64, count=len(table))
    codes = columns.codes[column]
    return table[codes].tolist(), sizes[codes]


def _float_column_tokens(columns: Columns, column: str) -> tuple[str | list[str] | None, Any]:
    values = columns.floats[column]
    if columns.n == 0 or np.isnan(values).all():
        return None, 0
    if column in COORD_COLUMNS:
        # Grid coordinates repeat: encode each distinct one once. (Distinct by bits, so
        # that -0.0 and 0.0 stay apart.)
        codes, bits = pd.factorize(values.view(np.int64))
        if len(bits) <= columns.n // 2:
            table = np.array(float_tokens(bits.view(np.float64)), dtype=object)
            sizes = np.fromiter(map(len, table), dtype=np.int64, count=len(table))
            return table[codes].tolist(), sizes[codes]
    text = ENCODER.encode(values.tolist())[1:-1].decode()
    return text.split(","), text


def _metadata_tokens(columns: Columns) -> tuple[str | list[str] | None, Any]:
    values = columns.metadata
    missing = pd.isna(values)
    if columns.n == 0 or missing.all():
        return None, 0
    first = values[0]
    if not missing.any() and all(v is first for v in values):  # a map's one metadata dict
        return encode_metadata(first), 0
    tokens = [
        "null" if gone else encode_metadata(v) for v, gone in zip(values, missing, strict=True)
    ]
    return tokens, np.fromiter(map(len, tokens), dtype=np.int64, count=columns.n)


def float_tokens(values: np.ndarray) -> list[str]:
    """Shortest round-trip JSON text of each float (NaN as null)."""
    return ENCODER.encode(values.tolist())[1:-1].decode().split(",")


BODY_OVERHEAD = len('{"annotations":[]}')
