"""Cutting records into chunks that respect the row and byte caps of a request."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..options import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CHUNK_BYTES
from ..schemas import (
    RECORD_COLUMNS,
)
from .columns import Columns
from .encode import BODY_OVERHEAD, EncodedRecords

__all__ = [
    "Chunk",
    "dry_run_frame",
    "iter_chunks",
    "with_positions",
]

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    """Records sent in one request (or in several, after a 413 split): their arrays, their
    labels, and their positions in the whole input."""

    number: int
    columns: Columns = field(repr=False)
    index: pd.Index = field(repr=False)
    positions: np.ndarray  # position of each record in the whole input, for ordering
    encoded: EncodedRecords | None = field(default=None, repr=False)
    rows: slice = field(default_factory=lambda: slice(None), repr=False)

    @classmethod
    def of(cls, records: pd.DataFrame, positions: np.ndarray, number: int = -1) -> Chunk:
        """A chunk of records given as a DataFrame."""
        return cls(number, Columns.of(records), records.index, positions)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def records(self) -> pd.DataFrame:
        """The chunk's records as a DataFrame."""
        return self.columns.frame(self.index)

    def body(self) -> bytes:
        if self.encoded is None:
            self.encoded, self.rows = EncodedRecords(self.columns), slice(None)
        return self.encoded.body(self.rows)

    def take(self, mask: np.ndarray) -> Chunk:
        # Re-encoded on demand: taking a subset is the rare path (faults, 413).
        return Chunk(self.number, self.columns[mask], self.index[mask], self.positions[mask])

    def split(self) -> tuple[Chunk, Chunk]:
        half = len(self) // 2
        first = np.zeros(len(self), dtype=bool)
        first[:half] = True
        return self.take(first), self.take(~first)


def iter_chunks(
    blocks: Iterable[tuple[pd.DataFrame, np.ndarray]],
    *,
    chunksize: int = DEFAULT_CHUNK_SIZE,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> Iterator[Chunk]:
    """Cut record blocks into chunks of at most ``chunksize`` rows and ``max_chunk_bytes``.

    Records are encoded one slice at a time, so memory holds one chunk's text, not the
    map's.
    """
    number = 0
    for records, positions in blocks:
        columns = Columns.of(records)
        for start in range(0, len(columns), chunksize):
            stop = min(start + chunksize, len(columns))
            piece = columns[start:stop]
            encoded = EncodedRecords(piece)
            if encoded.total + len(piece) - 1 <= max_chunk_bytes - BODY_OVERHEAD:
                yield Chunk(
                    number,
                    piece,
                    records.index[start:stop],
                    positions[start:stop],
                    encoded,
                    slice(0, len(piece)),
                )
                number += 1
                continue
            ends = np.cumsum(encoded.sizes + 1)
            begin = 0
            while begin < len(piece):
                base = ends[begin - 1] if begin else 0
                limit = base + max_chunk_bytes - BODY_OVERHEAD
                end = int(np.searchsorted(ends, limit, side="right"))
                end = max(end, begin + 1)  # a single record always fits (metadata is capped)
                yield Chunk(
                    number,
                    piece[begin:end],
                    records.index[start + begin : start + end],
                    positions[start + begin : start + end],
                    encoded,
                    slice(begin, end),
                )
                number += 1
                begin = end


def dry_run_frame(
    blocks: Iterable[pd.DataFrame], chunksize: int, max_chunk_bytes: int
) -> pd.DataFrame:
    parts, numbers = [], []
    for chunk in iter_chunks(
        with_positions(blocks), chunksize=chunksize, max_chunk_bytes=max_chunk_bytes
    ):
        parts.append(chunk.records)
        numbers.append(np.full(len(chunk), chunk.number, dtype=np.int64))
    if not parts:
        return pd.DataFrame(columns=[*RECORD_COLUMNS, "chunk"])
    return pd.concat(parts).assign(chunk=np.concatenate(numbers))


def with_positions(blocks: Iterable[pd.DataFrame]) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    offset = 0
    for block in blocks:
        yield block, np.arange(offset, offset + len(block), dtype=np.int64)
        offset += len(block)
