"""Chunking, encoding, sending, retrying and reconciling an upload of canonical records.

The rules that keep an upload exactly-once, since bulk create is not idempotent:

* retry blindly only what provably did not take effect: a refused connection, 429, 503,
  and 413 (split the chunk, then send the halves);
* after an ambiguous failure (the request reached the server but no success came back: a
  read timeout, a reset, 500, 502, 504) list what the sample holds and resend only the
  records that are not there;
* match what the server created to the input rows by content (the position key and the
  value), never by position in the answer alone.

Every outcome is accounted for: the return value is the frame of created annotations,
indexed like the input; on failure :class:`~atomscale_accessors.errors.UploadError` says
what was created, what was not, and what could not be established.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any, Literal

import msgspec
import numpy as np
import pandas as pd

from .client import Client, check_uuid, resolve_client
from .errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    ApiError,
    TransportError,
    UploadError,
)
from .frames import (
    FLOAT_COLUMNS,
    REPEATED_TEXT_COLUMNS,
    AnnotationObject,
    FrameBuilder,
    annotation_frame,
    decode_annotations,
    metadata_copies,
    parse_times,
    text_codes,
)
from .locking import sample_lock
from .schemas import (
    COORD_COLUMNS,
    POSITION_KEY,
    RECORD_COLUMNS,
    RECORD_STRING_COLUMNS,
    compact_records,
    encode_metadata,
    value_codes,
)
from .validation import validate_records

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_WORKERS",
    "IF_EXISTS",
    "Chunk",
    "EncodedRecords",
    "iter_chunks",
    "upload_error",
    "upload_records",
]

log = logging.getLogger("atomscale_accessors")

IfExists = Literal["fail", "skip", "append", "update"]
IF_EXISTS: tuple[str, ...] = ("fail", "skip", "append", "update")
DEFAULT_CHUNK_SIZE = 5_000
DEFAULT_MAX_CHUNK_BYTES = 8 * 2**20
DEFAULT_MAX_WORKERS = 4
_MIN_CHUNK_BYTES = 128 * 1024
# Statuses after which the request provably did not take effect: safe to send again.
_RETRY_STATUSES = frozenset({429, 503})
# Statuses after which the request may have taken effect: ask the server before resending.
_AMBIGUOUS_STATUSES = frozenset({500, 502, 504})
_FLOATS = frozenset({"property_value", *COORD_COLUMNS})
_NULL_TEXT = "\x00"  # stands for "unset" in match keys, where NaN and None must agree
_MATCH_KEY = (*POSITION_KEY, "property_value")
_ENCODER = msgspec.json.Encoder()
# Up to this many properties, the existing annotations are listed one property at a time
# (the list route filters by name); beyond, the whole sample is listed once.
_MAX_NAMED_LISTINGS = 4


# -- records as arrays ---------------------------------------------------------------------
class _Columns:
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
    def of(cls, records: pd.DataFrame) -> _Columns:
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

    def __getitem__(self, rows: slice | np.ndarray) -> _Columns:
        n = len(range(self.n)[rows]) if isinstance(rows, slice) else None
        metadata = self.metadata[rows]
        return _Columns(
            n if n is not None else len(metadata),
            {c: v[rows] for c, v in self.floats.items()},
            {c: v[rows] for c, v in self.codes.items()},
            self.values,
            metadata,
        )

    def text(self, column: str) -> np.ndarray:
        """A text column as objects, None where unset."""
        table = np.append(self.values[column], None)
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


# -- encoding ------------------------------------------------------------------------------
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

    def __init__(self, records: pd.DataFrame | _Columns) -> None:
        columns = records if isinstance(records, _Columns) else _Columns.of(records)
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
            tokens, lengths = _column_tokens(columns, column)
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


def _column_tokens(columns: _Columns, column: str) -> tuple[str | list[str] | None, Any]:
    """JSON tokens of a column and their lengths: (None, 0) when unset on every row, one
    token when the same on every row, else a list of tokens (with, for floats, their
    comma-joined text in place of the lengths)."""
    n = columns.n
    if column in columns.floats:
        values = columns.floats[column]
        if n == 0 or np.isnan(values).all():
            return None, 0
        if column in COORD_COLUMNS:
            # Grid coordinates repeat: encode each distinct one once. (Distinct by bits,
            # so that -0.0 and 0.0 stay apart.)
            codes, bits = pd.factorize(values.view(np.int64))
            if len(bits) <= n // 2:
                table = np.array(_float_tokens(bits.view(np.float64)), dtype=object)
                sizes = np.fromiter(map(len, table), dtype=np.int64, count=len(table))
                return table[codes].tolist(), sizes[codes]
        text = _ENCODER.encode(values.tolist())[1:-1].decode()
        return text.split(","), text
    if column == "metadata":
        values = columns.metadata
        missing = pd.isna(values)
        if n == 0 or missing.all():
            return None, 0
        first = values[0]
        if not missing.any() and all(v is first for v in values):  # a map's one metadata dict
            return encode_metadata(first), 0
        tokens = [
            "null" if gone else encode_metadata(v) for v, gone in zip(values, missing, strict=True)
        ]
        return tokens, np.fromiter(map(len, tokens), dtype=np.int64, count=n)
    same, value = columns.constant(column)
    if same:
        return (None, 0) if value is None else (encode_basestring_ascii(value), 0)
    # Each distinct value encoded once; rows pick theirs (the last entry is "unset").
    table = np.array([*map(encode_basestring_ascii, columns.values[column]), "null"], dtype=object)
    sizes = np.fromiter(map(len, table), dtype=np.int64, count=len(table))
    codes = columns.codes[column]
    return table[codes].tolist(), sizes[codes]


def _float_tokens(values: np.ndarray) -> list[str]:
    """Shortest round-trip JSON text of each float (NaN as null)."""
    return _ENCODER.encode(values.tolist())[1:-1].decode().split(",")


_BODY_OVERHEAD = len('{"annotations":[]}')


# -- chunking ------------------------------------------------------------------------------
@dataclass
class Chunk:
    """Records sent in one request (or in several, after a 413 split): their arrays, their
    labels, and their positions in the whole input."""

    number: int
    columns: _Columns = field(repr=False)
    index: pd.Index = field(repr=False)
    positions: np.ndarray  # position of each record in the whole input, for ordering
    encoded: EncodedRecords | None = field(default=None, repr=False)
    rows: slice = field(default_factory=lambda: slice(None), repr=False)

    @classmethod
    def of(cls, records: pd.DataFrame, positions: np.ndarray, number: int = -1) -> Chunk:
        """A chunk of records given as a DataFrame."""
        return cls(number, _Columns.of(records), records.index, positions)

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
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> Iterator[Chunk]:
    """Cut record blocks into chunks of at most ``chunk_size`` rows and ``max_chunk_bytes``.

    Records are encoded one slice at a time, so memory holds one chunk's text, not the
    map's.
    """
    number = 0
    for records, positions in blocks:
        columns = _Columns.of(records)
        for start in range(0, len(columns), chunk_size):
            stop = min(start + chunk_size, len(columns))
            piece = columns[start:stop]
            encoded = EncodedRecords(piece)
            if encoded.total + len(piece) - 1 <= max_chunk_bytes - _BODY_OVERHEAD:
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
                limit = base + max_chunk_bytes - _BODY_OVERHEAD
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


# -- answers and matching ------------------------------------------------------------------
class _Stored(msgspec.Struct, gc=False):
    """The fields of an answered annotation that an upload reads; the rest are skipped
    while parsing, which is most of the cost of a bulk answer. (Not tracked by the garbage
    collector: a million of them would make every collection walk a million objects.)"""

    id: str
    property_name: str | None = None
    property_value: float | None = None
    coord_ref_frame: str | None = None
    coord_units: str | None = None
    coord_x: float | None = None
    coord_y: float | None = None
    coord_z: float | None = None
    last_updated: str | None = None
    version: str | int | float | None = None


_DECODE_STORED = msgspec.json.Decoder(list[_Stored])


class _Answer:
    """Annotations answered by the server, as columns: ids, what the server added, and the
    key fields used to pair them with records."""

    def __init__(
        self,
        ids: list[str],
        last_updated: list[Any],
        versions: list[Any],
        keys: dict[str, np.ndarray],
    ) -> None:
        self.ids = ids
        self.last_updated = last_updated
        self.versions = versions
        self.keys = keys

    @classmethod
    def decode(cls, raw: bytes, route: str) -> _Answer:
        """Parse a JSON array of annotation objects answered to ``route``; an
        :class:`ApiError` naming the field and value when it is not one."""
        items = decode_annotations(raw, route, _DECODE_STORED)
        get = {name: attrgetter(name) for name in _Stored.__struct_fields__}
        return cls(
            list(map(get["id"], items)),
            list(map(get["last_updated"], items)),
            list(map(get["version"], items)),
            {
                column: np.array(list(map(get[column], items)), dtype=_key_dtype(column))
                for column in _MATCH_KEY
            },
        )

    @classmethod
    def from_objects(cls, objects: list[AnnotationObject]) -> _Answer:
        """Annotation objects already parsed."""
        return cls(
            [obj.id for obj in objects],
            [obj.last_updated for obj in objects],
            [obj.version for obj in objects],
            {
                column: np.array(list(map(attrgetter(column), objects)), dtype=_key_dtype(column))
                for column in _MATCH_KEY
            },
        )

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: np.ndarray) -> _Answer:
        if len(positions) == len(self) and (positions == np.arange(len(self))).all():
            return self
        pick = positions.tolist()
        return _Answer(
            [self.ids[i] for i in pick],
            [self.last_updated[i] for i in pick],
            [self.versions[i] for i in pick],
            {column: values[positions] for column, values in self.keys.items()},
        )

    def without(self, ids: _IdSet) -> _Answer:
        """The annotations whose id is not in ``ids``."""
        keep = ~ids.contains(id_hashes(self.ids))
        return self if keep.all() else self.take(np.flatnonzero(keep))


def _expected_answer(
    chunk: Chunk, raw: bytes, *, peek: bool = True
) -> tuple[_Answer | None, bool | None]:
    """The answer to a chunk, when it is the usual one: one annotation per record, in the
    order sent, with every key field as sent. None when it is anything else.

    The text key fields are checked while parsing (as literal values), and the floats
    compared as arrays afterwards, so no key field becomes a column of Python objects.
    With ``peek``, the first annotation's time and version are taken as literal values
    too: a bulk answer usually has one of each (one transaction), and then no row's time
    or version is made into an object either. When that guess fails, the answer is
    parsed again without it. Returns the answer (or None) and whether the guess held
    (None: not tried).
    """
    columns = chunk.columns
    kinds: list[Any] = []
    for column in _TEXT_KEYS:
        same, value = columns.constant(column)
        if not same:
            return None, None
        kinds.append(value)
    for column in COORD_COLUMNS:
        values = columns.floats[column]
        isnan = np.isnan(values)
        if isnan.all():
            kinds.append(None)
        elif isnan.any():
            return None, None
        else:
            kinds.append(float)
    shared = (_first_text(raw, b'"last_updated":'), _first_text(raw, b'"version":'))
    guessed = None
    items = None
    if peek and None not in shared:
        try:
            items = _expected_decoder(tuple(kinds), shared).decode(raw)
            guessed = True
        except msgspec.DecodeError:
            guessed = False
    if items is None:
        shared = (None, None)
        try:
            items = _expected_decoder(tuple(kinds)).decode(raw)
        except msgspec.DecodeError:  # ValidationError too: something else than expected
            return None, guessed
    if len(items) != len(chunk):
        return None, guessed
    for column, kind in [("property_value", float), *zip(COORD_COLUMNS, kinds[3:], strict=True)]:
        if kind is float:
            answered = np.fromiter(map(attrgetter(column), items), np.float64, len(items))
            if not np.array_equal(answered, columns.floats[column]):
                return None, guessed
    time, version = shared
    answer = _Answer(
        list(map(_GET_ID, items)),
        [time] * len(items) if time is not None else list(map(_GET_TIME, items)),
        [version] * len(items) if version is not None else list(map(_GET_VERSION, items)),
        {},
    )
    return answer, guessed


def _first_text(raw: bytes, key: bytes) -> str | None:
    """The first string value of a key in a JSON text, found without parsing (it may be
    a nested key: it is only a guess, checked by the parse that uses it)."""
    at = raw.find(key, 0, 4096)
    if at < 0:
        return None
    start = at + len(key)
    while raw[start : start + 1] in (b" ", b"\n", b"\r", b"\t"):
        start += 1
    if raw[start : start + 1] != b'"':
        return None
    end = raw.find(b'"', start + 1, start + 256)
    value = raw[start + 1 : end]
    if end < 0 or b"\\" in value:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


_TEXT_KEYS = tuple(c for c in POSITION_KEY if c not in COORD_COLUMNS)
_GET_ID, _GET_TIME, _GET_VERSION = (
    attrgetter("id"),
    attrgetter("last_updated"),
    attrgetter("version"),
)


def _expected_decoder(
    kinds: tuple[Any, ...], shared: tuple[str, str] | None = None
) -> msgspec.json.Decoder:
    """A decoder of bulk answers whose text key fields must equal given values (None:
    null or absent) and whose coordinates must be numbers (``float``) or null (None);
    with ``shared``, every time and version must be these."""
    if shared is None:
        return _cached_decoder(kinds)
    return _build_decoder(kinds, shared)


@functools.lru_cache(maxsize=64)
def _cached_decoder(kinds: tuple[Any, ...]) -> msgspec.json.Decoder:
    return _build_decoder(kinds, None)


def _build_decoder(kinds: tuple[Any, ...], shared: tuple[str, str] | None) -> msgspec.json.Decoder:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("id", str)]
    for column, kind in zip((*_TEXT_KEYS, *COORD_COLUMNS), kinds, strict=True):
        if kind is None:
            fields.append((column, None, None))
        else:
            fields.append((column, float if kind is float else Literal[kind]))
    fields.append(("property_value", float))
    if shared is None:
        fields += [("last_updated", str | None, None), ("version", str | int | float | None, None)]
    else:
        fields += [("last_updated", Literal[shared[0]]), ("version", Literal[shared[1]])]
    expected = msgspec.defstruct("_Expected", fields, kw_only=True, gc=False)
    return msgspec.json.Decoder(list[expected])  # type: ignore[valid-type]


class _IdSet:
    """A set of annotation ids held as 64-bit hashes: an upload of millions of annotations
    remembers every id it was given, and a set of strings would cost ~100 bytes each.

    The hashes are kept in sorted parts whose sizes at least halve from one to the next
    (merged as they are added), so adding a chunk's ids and asking about the next chunk's
    cost about the chunk's size times a logarithm, not the size of the whole set.

    Two different ids share a hash with odds of about n**2 / 2**65 (one in a million for
    four million ids); the cost of that is one record reconciled by a listing.
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._parts: list[np.ndarray] = []
        self.add(id_hashes(list(ids)))

    def add(self, hashes: np.ndarray) -> None:
        if not len(hashes):
            return
        self._parts.append(np.unique(hashes))
        while len(self._parts) > 1 and 2 * len(self._parts[-1]) >= len(self._parts[-2]):
            last = self._parts.pop()
            self._parts[-1] = np.union1d(self._parts[-1], last)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """For each hash, whether it is in the set."""
        found = np.zeros(len(hashes), dtype=bool)
        for part in self._parts:
            at = np.searchsorted(part, hashes).clip(max=len(part) - 1)
            found |= part[at] == hashes
        return found


def id_hashes(ids: list[str]) -> np.ndarray:
    """The 64-bit hashes of annotation ids, as :class:`_IdSet` holds them."""
    return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))


def _repeated(hashes: np.ndarray) -> np.ndarray:
    """For each hash, whether another element has the same one."""
    if len(hashes) < 2:
        return np.zeros(len(hashes), dtype=bool)
    order = np.argsort(hashes, kind="stable")
    ranked = hashes[order]
    same = ranked[1:] == ranked[:-1]
    if not same.any():
        return np.zeros(len(hashes), dtype=bool)
    twin = np.zeros(len(hashes), dtype=bool)
    twin[1:] |= same
    twin[:-1] |= same
    repeated = np.empty(len(hashes), dtype=bool)
    repeated[order] = twin
    return repeated


def _key_dtype(column: str) -> str:
    return "float64" if column in _FLOATS else "object"


def _record_keys(records: pd.DataFrame | _Columns) -> dict[str, np.ndarray]:
    """The key columns of records as arrays, text nulls as None like in an answer."""
    columns = records if isinstance(records, _Columns) else _Columns.of(records)
    return {
        column: columns.floats[column] if column in _FLOATS else columns.text(column)
        for column in _MATCH_KEY
    }


def _key_frame(
    keys: dict[str, np.ndarray], columns: tuple[str, ...] = _MATCH_KEY, *, count: bool = True
) -> pd.DataFrame:
    """Key columns ready to join on (text nulls as one marker, so NaN and None agree), with
    an occurrence counter ``_n`` that pairs repeated keys one to one."""
    frame = pd.DataFrame({column: _joinable(column, keys[column]) for column in columns})
    if count:
        frame["_n"] = frame.groupby(list(columns), dropna=False, sort=False).cumcount().to_numpy()
    return frame


def _joinable(column: str, values: np.ndarray) -> np.ndarray:
    return values if column in _FLOATS else np.where(pd.isna(values), _NULL_TEXT, values)


def _match(
    records: pd.DataFrame | _Columns,
    answer: _Answer,
    key: tuple[str, ...] = _MATCH_KEY,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair records with answered annotations of the same content (by default the position
    key and the value; with ``key=POSITION_KEY``, the position alone), one to one.

    Returns, for each record, the position of its annotation in the answer (or -1), and for
    each annotation whether it was paired.
    """
    if len(records) == 0 or len(answer) == 0:
        return np.full(len(records), -1, dtype=np.int64), np.zeros(len(answer), dtype=bool)
    mine = _record_keys(records)
    if len(records) == len(answer) and _same_content(mine, answer.keys, key):
        # The usual answer: the same records in the same order. Every key field was
        # compared, so this is still a match by content; any difference takes the join.
        return np.arange(len(records), dtype=np.int64), np.ones(len(answer), dtype=bool)
    left = _key_frame(mine, key)
    left["_left"] = np.arange(len(records))
    right = _key_frame(answer.keys, key)
    right["_right"] = np.arange(len(answer))
    merged = left.merge(right, on=[*key, "_n"], how="inner")
    paired = np.full(len(records), -1, dtype=np.int64)
    paired[merged["_left"].to_numpy()] = merged["_right"].to_numpy()
    used = np.zeros(len(answer), dtype=bool)
    used[merged["_right"].to_numpy()] = True
    return paired, used


def _same_content(
    mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray], key: tuple[str, ...]
) -> bool:
    """Whether row i of one set of key columns equals row i of the other, for every i."""
    for column in key:
        a, b = mine[column], theirs[column]
        if column in _FLOATS:
            if not np.array_equal(a, b, equal_nan=True):
                return False
        elif not np.array_equal(_joinable(column, a), _joinable(column, b)):
            return False
    return True


# -- the upload ----------------------------------------------------------------------------
@dataclass
class _Outcome:
    # Input positions of the records created or updated (their rows are in the result).
    done: list[np.ndarray] = field(default_factory=list)
    not_created: list[Chunk] = field(default_factory=list)
    not_updated: list[Chunk] = field(default_factory=list)
    unknown: list[Chunk] = field(default_factory=list)
    skipped: list[np.ndarray] = field(default_factory=list)  # positions stored before
    # Records of ``unknown`` whose positions hold new annotations with other content, and
    # those annotations (in the records' order).
    mismatched: list[tuple[Chunk, _Answer]] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def n_done(self) -> int:
        return sum(len(where) for where in self.done)

    def merge(self, other: _Outcome) -> None:
        self.done += other.done
        self.not_created += other.not_created
        self.not_updated += other.not_updated
        self.unknown += other.unknown
        self.mismatched += other.mismatched
        if self.error is None:
            self.error = other.error


class _Uploader:
    """One upload: the sample, the client, and the claims: every annotation id that is
    accounted for (stored before the upload, or taken by one of its records). A record
    takes an id only if no one has, checked and taken in one step under ``lock``."""

    def __init__(self, client: Client, sample_id: str, result: FrameBuilder) -> None:
        self.client = client
        self.sample_id = sample_id
        self.result = result
        self.policy = client.retry
        self.bulk_path = f"physical_samples/{sample_id}/annotations/bulk"
        self.route = f"GET /physical_samples/{sample_id}/annotations/"
        self.claimed = _IdSet()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.abandoned = False
        self.timed_out = False
        # Learned from 413 answers, so later chunks are cut before they are refused.
        self.max_rows: int | None = None
        # Whether answers have one time and version each (see _expected_answer).
        self.peek = True

    # -- listing -------------------------------------------------------------------------
    def list_existing(self, **filters: Any) -> bytes:
        """List annotations as raw JSON, retrying any failure: a GET changes nothing."""
        attempt, started = 1, time.monotonic()
        while True:
            try:
                return self.client.list_annotations_raw(self.sample_id, **filters)
            except (TransportError, ApiError) as exc:
                if not _transient(exc) or not self.policy.allows(attempt, started):
                    raise
                if not self.sleep(attempt, exc):
                    raise
                attempt += 1

    def abandon(self) -> None:
        """Stop the upload at once (Ctrl+C): requests still running write nothing more into
        the result, so what it shows stays what the account says."""
        with self.lock:
            self.abandoned = True
        self.stop.set()

    def sleep(self, attempt: int, exc: BaseException) -> bool:
        """Wait before the next attempt; False when the upload is being stopped."""
        retry_after = getattr(exc, "retry_after", None)
        delay = self.policy.wait(attempt, retry_after)
        log.info("retrying in %.2f s after %s", delay, _describe(exc))
        return not self.stop.wait(delay)

    def claim(self, answer: _Answer) -> np.ndarray:
        """Take the answer's ids for records; which ones were free to take. An id repeated
        within the answer, or taken already, is not free. (Call with the lock held.)"""
        hashes = id_hashes(answer.ids)
        free = ~(_repeated(hashes) | self.claimed.contains(hashes))
        self.claimed.add(hashes[free])
        return free

    # -- one chunk -----------------------------------------------------------------------
    def send(self, chunk: Chunk) -> _Outcome:
        """Send one chunk until every record is created, or its fate is recorded."""
        outcome = _Outcome()
        started = time.perf_counter()
        try:
            requests_made = self._send(chunk, outcome)
        except Exception as exc:  # a bug or an unforeseen answer: account, stop, report
            self.stop.set()
            settled = np.concatenate(
                outcome.done
                + [c.positions for c in outcome.not_created + outcome.unknown]
                + [np.empty(0, dtype=np.int64)]
            )
            outcome.unknown.append(chunk.take(~np.isin(chunk.positions, settled)))
            outcome.error = outcome.error or exc
            log.exception("chunk %d: unexpected error", chunk.number)
            return outcome
        log.info(
            "chunk %d: %d of %d annotations created in %.2f s (%d %s)",
            chunk.number,
            outcome.n_done,
            len(chunk),
            time.perf_counter() - started,
            requests_made,
            "request" if requests_made == 1 else "requests",
        )
        return outcome

    def _send(self, chunk: Chunk, outcome: _Outcome) -> int:
        """The retry loop; returns how many requests were made."""
        pending = self._cut(chunk)
        attempt, started = 1, time.monotonic()
        requests_made = 0
        while pending:
            piece = pending.pop(0)
            if self.stop.is_set() or not self.policy.allows(attempt - 1, started):
                outcome.not_created.append(piece)
                continue
            requests_made += 1
            try:
                response = self.client.request("POST", self.bulk_path, data=piece.body())
            except ApiError as exc:
                if exc.status_code == 413 and len(piece) > 1:
                    # The request was refused whole: nothing was stored. Halve it, and cut
                    # every later chunk to at most that size.
                    half = len(piece) // 2
                    with self.lock:
                        self.max_rows = min(self.max_rows or half, half)
                    pending[:0] = list(piece.split())
                    continue
                if (
                    exc.status_code in _RETRY_STATUSES
                    and self.policy.allows(attempt, started)
                    and self.sleep(attempt, exc)
                ):
                    attempt += 1
                    pending.insert(0, piece)
                    continue
                if exc.status_code in _AMBIGUOUS_STATUSES:
                    rest = self._reconcile(piece, outcome, exc)
                    if rest is not None and len(rest):
                        self._again(rest, pending, outcome, exc, (attempt, started))
                        attempt += 1
                    continue
                outcome.not_created.append(piece)
                outcome.error = exc
                continue
            except TransportError as exc:
                if not exc.sent:
                    if self.policy.allows(attempt, started) and self.sleep(attempt, exc):
                        attempt += 1
                        pending.insert(0, piece)
                    else:
                        outcome.not_created.append(piece)
                        outcome.error = exc
                    continue
                rest = self._reconcile(piece, outcome, exc)
                if rest is not None and len(rest):
                    self._again(rest, pending, outcome, exc, (attempt, started))
                    attempt += 1
                continue
            # A 2xx: the request took effect. Pair what the server created with the records.
            unmatched = self._accept_answer(piece, response, outcome)
            if unmatched is not None and len(unmatched):
                # The answer does not account for these records: ask what is stored.
                mismatch = ApiError(
                    response.status_code,
                    f"the bulk answer does not match what was sent for {len(unmatched)} "
                    "records (other content, a repeated id, or an id already taken)",
                    method="POST",
                    path="/" + self.bulk_path,
                )
                rest = self._reconcile(unmatched, outcome, mismatch)
                if rest is not None and len(rest):
                    self._again(rest, pending, outcome, mismatch, (attempt, started))
                    attempt += 1
        return requests_made

    def _cut(self, chunk: Chunk) -> list[Chunk]:
        limit = self.max_rows
        if limit is None or len(chunk) <= limit:
            return [chunk]
        pieces = []
        for start in range(0, len(chunk), limit):
            mask = np.zeros(len(chunk), dtype=bool)
            mask[start : start + limit] = True
            pieces.append(chunk.take(mask))
        return pieces

    def _again(
        self,
        rest: Chunk,
        pending: list[Chunk],
        outcome: _Outcome,
        cause: BaseException,
        series: tuple[int, float],
    ) -> None:
        """Queue records that did not land for another try, within the retry budget
        (``series``: the attempt number and when the first attempt began)."""
        if not self.policy.allows(*series) or not self.sleep(series[0], cause):
            outcome.not_created.append(rest)
            outcome.error = cause
            return
        pending.insert(0, rest)

    def _accept_answer(self, chunk: Chunk, response: Any, outcome: _Outcome) -> Chunk | None:
        """Take a 2xx bulk answer: records paired by content with annotations whose ids are
        free are created. Returns the records the answer does not account for (None when
        the answer cannot be read: the chunk's fate is then unknown)."""
        answer, guessed = _expected_answer(chunk, response.content, peek=self.peek)
        if guessed is False:  # answers with times or versions that differ: stop guessing
            self.peek = False
        if answer is not None:  # the usual answer: every record paired, in order
            matched, found = answer, np.ones(len(chunk), dtype=bool)
        else:
            try:
                answer = _Answer.decode(response.content, "POST /" + self.bulk_path)
            except ApiError as exc:
                # The request took effect, but what was created cannot be read: never resend.
                outcome.unknown.append(chunk)
                outcome.error = exc
                return None
            paired, _ = _match(chunk.columns, answer)
            found = paired >= 0
            # An id given twice in the answer is suspect wherever it appears.
            twice = _repeated(id_hashes(answer.ids))
            found[found] &= ~twice[paired[found]]
            matched = answer.take(paired[found])
        rows = np.flatnonzero(found)
        mine = chunk if len(rows) == len(chunk) else chunk.take(found)
        rows_of = self._rows(mine, matched)  # prepared outside the lock
        with self.lock:  # checked, written and claimed in one step
            if self.abandoned:
                return chunk.take(np.zeros(len(chunk), dtype=bool))
            free = self.claim(matched)
            if free.all():
                self.result.put(mine.positions, **rows_of)
                outcome.done.append(mine.positions)
            else:
                found[rows[~free]] = False
        if not free.all():
            self._created(chunk.take(found), matched.take(np.flatnonzero(free)), outcome)
        return None if found.all() else chunk.take(~found)

    def _created(self, chunk: Chunk, answer: _Answer, outcome: _Outcome) -> None:
        """Write the created records' rows into the result."""
        if len(chunk):
            rows = self._rows(chunk, answer)
            with self.lock:
                if self.abandoned:
                    return
                self.result.put(chunk.positions, **rows)
            outcome.done.append(chunk.positions)

    def _rows(self, chunk: Chunk, answer: _Answer) -> dict[str, Any]:
        """The result rows of created records: the records' own columns, and from the
        answer only what the server added (id, time, version)."""
        columns = chunk.columns
        route = "POST /" + self.bulk_path
        return {
            "floats": columns.floats,
            "texts": {
                **{c: (columns.codes[c], columns.values[c]) for c in RECORD_STRING_COLUMNS},
                "version": text_codes(answer.versions),
            },
            "ids": answer.ids,
            "times": parse_times(answer.last_updated, route),
            "metadata": metadata_copies(columns.metadata),
            "index": chunk.index,
        }

    def _reconcile(self, chunk: Chunk, outcome: _Outcome, cause: BaseException) -> Chunk | None:
        """After an ambiguous failure or an answer that does not match: keep what landed,
        return what must be sent again.

        A record is created when a new annotation of its content is stored; unknown when
        its position holds a new annotation with other content (sending it again could
        store it twice); to be sent again when nothing new is stored at its position.
        Returns None when the server cannot be asked (the records' fate is then unknown).
        """
        log.warning(
            "chunk %d: %s; checking which of its %d annotations were stored",
            chunk.number,
            _describe(cause),
            len(chunk),
        )
        if _may_be_running(cause):
            # The server may still be committing the request: give it time to finish, or
            # the listing misses what is about to land and the resend doubles it.
            settle = self.policy.settle
            if settle is None:
                settle = min(2 * self.client.timeout[1], self.policy.max_wait)
            with self.lock:
                self.timed_out = True
            self.stop.wait(settle)
        try:
            listed = _Answer.decode(
                self.list_existing(**_listing_filters(chunk.columns)), self.route
            )
        except (TransportError, ApiError) as exc:
            log.error(
                "chunk %d: could not list the sample to check (%s)", chunk.number, _describe(exc)
            )
            outcome.unknown.append(chunk)
            outcome.error = cause
            return None
        with self.lock:  # matched and claimed in one step: two checks never take one id
            candidates = listed.without(self.claimed)
            paired, used = _match(chunk.columns, candidates)
            found = paired >= 0
            matched = candidates.take(paired[found])
            self.claim(matched)
            others = candidates.take(np.flatnonzero(~used))
            at, _ = _match(chunk.columns, others, POSITION_KEY)
            differs = (at >= 0) & ~found
            stored_differently = others.take(at[differs])
            self.claim(stored_differently)
        self._created(chunk.take(found), matched, outcome)
        if differs.any():
            mismatched = chunk.take(differs)
            log.error(
                "chunk %d: %d records are stored with content other than sent",
                chunk.number,
                len(mismatched),
            )
            outcome.unknown.append(mismatched)
            outcome.mismatched.append((mismatched, stored_differently))
            outcome.error = outcome.error or ApiError(
                getattr(cause, "status_code", 200),
                f"{len(mismatched)} records are stored with other content than was sent "
                "(see .mismatched)",
                method="POST",
                path="/" + self.bulk_path,
            )
        rest = ~(found | differs)
        log.info(
            "chunk %d: %d of %d annotations were stored; %d to send again",
            chunk.number,
            int(found.sum()),
            len(chunk),
            int(rest.sum()),
        )
        return chunk.take(rest)


def _listing_filters(columns: _Columns, *, with_name: bool = True) -> dict[str, Any]:
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


def _may_be_running(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return exc.timed_out
    return isinstance(exc, ApiError) and exc.status_code == 504


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, ApiError) and exc.status_code in (_RETRY_STATUSES | _AMBIGUOUS_STATUSES)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status_code}"
    return str(exc) or type(exc).__name__


# -- entry point ---------------------------------------------------------------------------
def upload_records(
    records: pd.DataFrame | Iterable[pd.DataFrame] | Callable[[], Iterable[pd.DataFrame]],
    sample_id: str,
    *,
    client: Any = None,
    if_exists: IfExists = "fail",
    chunk_size: int | None = None,
    max_chunk_bytes: int | None = None,
    max_workers: int | None = None,
    progress: bool | Callable[[int, int | None], None] | None = None,
    dry_run: bool = False,
    dropna: bool = False,
    allow_duplicates: bool = False,
    validated: bool = False,
    ignore_ids: Collection[str] = (),
    total: int | None = None,
    verify: bool = False,
) -> pd.DataFrame:
    """Upload canonical records to a sample, exactly once; return what was created.

    Parameters
    ----------
    records : pandas.DataFrame, iterable of DataFrames, or a function returning one
        Canonical records, or blocks of them (with ``validated=True``: blocks the caller
        has validated already, e.g. a map streamed from dask). A function is called again
        when every block must be looked at before anything is sent (``if_exists="fail"``
        on a sample that holds annotations), so the blocks are never all held at once; a
        plain iterable is held in memory in that case.
    sample_id : str
        UUID of the physical sample; checked before any request.
    client : Client or SDK client, optional
        Default: configured from the environment.
    if_exists : {"fail", "skip", "append", "update"}, default "fail"
        What to do with records whose property is already stored at the same position:
        raise :class:`AnnotationExistsError` and send nothing; send only the new ones;
        send everything; or PATCH the stored ones with the new values and create the rest.
    chunk_size : int, default 5000
        Records per request at most.
    max_chunk_bytes : int, default 8 MiB
        Request body size at most.
    max_workers : int, default 4
        Requests in flight at once.
    progress : bool or callable, optional
        ``None``: a progress bar on a terminal or notebook, none otherwise; ``False``:
        never; ``True``: always; a callable is called as ``progress(done, total)``.
    dry_run : bool, default False
        Send nothing; return the records that would be sent with a ``chunk`` column.
    dropna, allow_duplicates : bool, default False
        Passed to :func:`~atomscale_accessors.validation.validate_records`.
    validated : bool, default False
        The caller has validated the records already.
    ignore_ids : collection of str, optional
        Stored annotations to treat as absent when applying ``if_exists``. A job that runs
        uploads in parts (dask partitions) passes the ids that existed before it started,
        with ``if_exists="skip"``: a part run twice then skips what its first run stored,
        and nothing else.
    total : int, optional
        How many records the blocks hold, when known: the result's columns are then
        allocated once, at their final size.
    verify : bool, default False
        After the upload, list the sample where it wrote and raise :class:`UploadError`
        (with ``.extra``) when a position holds annotations that neither the state before
        the upload nor the upload account for. Uploads to one sample from one machine are
        serialised (see :mod:`atomscale_accessors.locking`); this also catches what an
        upload from another machine at the same time doubled, after the fact.

    Returns
    -------
    pandas.DataFrame
        The annotation frame of the created annotations, indexed by the labels of the
        input records, in input order. With ``if_exists="update"``: created and updated.

    Raises
    ------
    AnnotationValidationError
        Invalid input; nothing was sent.
    AnnotationExistsError
        ``if_exists="fail"`` and some records are stored already; nothing was sent.
    UploadError
        The upload stopped part way; ``.created``, ``.not_created`` and ``.unknown`` say
        where it stands, and a re-run with ``if_exists="skip"`` completes it.
    """
    sid = check_uuid(sample_id)
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
    chunk_size = _positive_int(chunk_size, DEFAULT_CHUNK_SIZE, "chunk_size")
    max_workers = _positive_int(max_workers, DEFAULT_MAX_WORKERS, "max_workers")
    max_chunk_bytes = _positive_int(max_chunk_bytes, DEFAULT_MAX_CHUNK_BYTES, "max_chunk_bytes")
    if max_chunk_bytes < _MIN_CHUNK_BYTES:
        raise ValueError(f"max_chunk_bytes must be at least {_MIN_CHUNK_BYTES}")

    source: Callable[[], Iterable[pd.DataFrame]] | None = None
    whole: pd.DataFrame | None = None
    if isinstance(records, pd.DataFrame):
        # Text columns as categoricals once: validation, encoding and the result then work
        # on each column's few distinct values.
        records = compact_records(records)
        if not validated:
            records = validate_records(records, dropna=dropna, allow_duplicates=allow_duplicates)
        if len(records) == 0:
            raise AnnotationValidationError("nothing to upload: the input has no records")
        whole = records
        total = len(records)
        source = lambda: [records]  # noqa: E731
        blocks: Iterable[pd.DataFrame] = [records]
    else:
        if not validated:
            raise ValueError("blocks of records must be validated first (validated=True)")
        if callable(records):
            source = records
            blocks = records()
        else:
            blocks = records

    if dry_run:
        return _dry_run(blocks, chunk_size, max_chunk_bytes)

    resolved = resolve_client(client)
    result = FrameBuilder(sid, total, whole.index if whole is not None else None)
    with sample_lock(resolved.endpoint, sid):
        return _upload(
            _Uploader(resolved, sid, result),
            blocks,
            source,
            whole,
            if_exists=if_exists,
            ignore_ids=ignore_ids,
            chunking=(chunk_size, max_chunk_bytes),
            max_workers=max_workers,
            bar=_Progress(progress, total),
            verify=verify,
        )


def _upload(
    uploader: _Uploader,
    blocks: Iterable[pd.DataFrame],
    source: Callable[[], Iterable[pd.DataFrame]] | None,
    whole: pd.DataFrame | None,
    *,
    if_exists: str,
    ignore_ids: Collection[str],
    chunking: tuple[int, int],
    max_workers: int,
    bar: _Progress,
    verify: bool,
) -> pd.DataFrame:
    """The upload proper, with the sample's lock held: list what is stored, apply
    ``if_exists``, send, update, check, and account."""
    listing = _Listing.of(whole)
    existing = _Existing.list(uploader, listing, ignore=set(ignore_ids))
    # Reconciliation must not take stored annotations for new ones, ignored or not.
    uploader.claimed.add(id_hashes([*existing.ids, *ignore_ids]))
    if if_exists == "fail" and len(existing):
        # Decide before anything is sent: look at every block first.
        if source is not None:
            _refuse_clashes(source(), existing)
            blocks = source() if whole is None else blocks
        else:
            log.warning("holding every block in memory to check for stored annotations first")
            blocks = list(blocks)
            _refuse_clashes(blocks, existing)

    outcome = _Outcome()
    updates: list[tuple[pd.DataFrame, np.ndarray, list[AnnotationObject]]] = []
    interrupted = False
    try:
        to_send = _select(blocks, existing, if_exists, updates, outcome, bar)
        chunk_size, max_chunk_bytes = chunking
        chunks = iter_chunks(to_send, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes)
        _run(uploader, chunks, max_workers, outcome, bar)
        # _select fills ``updates`` as the blocks stream past, so PATCH after the creates.
        if updates:
            _apply_updates(uploader, updates, max_workers, outcome, bar)
    except KeyboardInterrupt:
        interrupted = True
        outcome.error = KeyboardInterrupt("interrupted (Ctrl+C)")
    except Exception as exc:  # anything unforeseen still ends with an account of the upload
        if outcome.error is None:
            outcome.error = exc
        log.exception("the upload stopped on an unexpected error")
    finally:
        bar.close()
    created = uploader.result.frame()
    if interrupted:
        try:
            _finish(outcome, uploader.sample_id, created, whole)
        except UploadError as error:
            raise KeyboardInterrupt(
                "the upload was interrupted; its account is the UploadError in __cause__"
            ) from error
    if (verify or uploader.timed_out) and len(created):
        _check_unaccounted(uploader, created, listing, strict=verify)
    return _finish(outcome, uploader.sample_id, created, whole)


def _positive_int(value: int | None, default: int, name: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _dry_run(blocks: Iterable[pd.DataFrame], chunk_size: int, max_chunk_bytes: int) -> pd.DataFrame:
    parts, numbers = [], []
    for chunk in iter_chunks(
        _with_positions(blocks), chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes
    ):
        parts.append(chunk.records)
        numbers.append(np.full(len(chunk), chunk.number, dtype=np.int64))
    if not parts:
        return pd.DataFrame(columns=[*RECORD_COLUMNS, "chunk"])
    return pd.concat(parts).assign(chunk=np.concatenate(numbers))


def _with_positions(blocks: Iterable[pd.DataFrame]) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    offset = 0
    for block in blocks:
        yield block, np.arange(offset, offset + len(block), dtype=np.int64)
        offset += len(block)


@dataclass(frozen=True)
class _Listing:
    """Which of a sample's annotations an upload must look at: those of its properties
    (listed one property at a time, up to a few) in its bounding box; for blocks streamed
    from elsewhere, the whole sample."""

    names: tuple[str, ...] | None = None
    box: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, whole: pd.DataFrame | None) -> _Listing:
        if whole is None:
            return cls()
        names = tuple(whole["property_name"].unique().tolist())
        box = _listing_filters(_Columns.of(whole), with_name=False)
        return cls(names if len(names) <= _MAX_NAMED_LISTINGS else None, box)

    def fetch(self, uploader: _Uploader) -> list[AnnotationObject]:
        objects: list[AnnotationObject] = []
        for name in self.names if self.names is not None else [None]:
            filters = dict(self.box, property_name=name) if name is not None else dict(self.box)
            objects.extend(decode_annotations(uploader.list_existing(**filters), uploader.route))
        return objects


class _Existing:
    """What the sample held before the upload: for ``if_exists`` and for reconciliation.

    Each stored annotation pairs with at most one record, so with repeated positions
    (``allow_duplicates=True``) two stored readings account for two records, not for all.
    """

    def __init__(self, objects: list[AnnotationObject]) -> None:
        self.objects = objects
        answer = _Answer.from_objects(objects)
        self.ids = answer.ids
        self.keys = _key_frame(answer.keys, POSITION_KEY, count=False)
        self.keys["_stored"] = np.arange(len(objects))
        self.unique = not self.keys.duplicated(subset=list(POSITION_KEY)).any()
        self.free = np.ones(len(objects), dtype=bool)

    @classmethod
    def list(cls, uploader: _Uploader, listing: _Listing, *, ignore: set[str]) -> _Existing:
        """List the sample's annotations that could clash: of these properties, in this box."""
        objects = listing.fetch(uploader)
        if ignore:
            objects = [obj for obj in objects if obj.id not in ignore]
        return cls(objects)

    def __len__(self) -> int:
        return len(self.objects)

    def lookup(self, block: pd.DataFrame, *, consume: bool = True) -> np.ndarray:
        """For each record, the stored annotation at its position (its number), or -1."""
        left = _key_frame(_record_keys(block), POSITION_KEY, count=False)
        if self.unique and not left.duplicated().any():
            merged = left.merge(self.keys, on=list(POSITION_KEY), how="left")
        else:
            # Repeated positions: the n-th record at a position pairs with the n-th stored
            # annotation there that no earlier record has taken.
            right = self.keys[self.free]
            right = right.assign(_n=right.groupby(list(POSITION_KEY), dropna=False).cumcount())
            left["_n"] = left.groupby(list(POSITION_KEY), dropna=False).cumcount()
            merged = left.merge(right, on=[*POSITION_KEY, "_n"], how="left")
        stored = merged["_stored"].fillna(-1).to_numpy(dtype=np.int64)
        if consume:
            self.free[stored[stored >= 0]] = False
        return stored

    def frame(self, stored: np.ndarray, index: pd.Index) -> pd.DataFrame:
        return annotation_frame([self.objects[i] for i in stored.tolist()], index=index)


def _refuse_clashes(blocks: Iterable[pd.DataFrame], existing: _Existing) -> None:
    """Raise ``AnnotationExistsError`` when any record is stored already (nothing sent)."""
    clashes = []
    for block in blocks:
        stored = existing.lookup(block, consume=False)
        hit = stored >= 0
        if hit.any():
            clashes.append(existing.frame(stored[hit], block.index[hit]))
    if clashes:
        raise _exists_error(pd.concat(clashes))


def _select(
    blocks: Iterable[pd.DataFrame],
    existing: _Existing,
    if_exists: str,
    updates: list[tuple[pd.DataFrame, np.ndarray, list[dict[str, Any]]]],
    outcome: _Outcome,
    bar: _Progress,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Apply ``if_exists``: yield the records to create, with their input positions."""
    positioned = _with_positions(blocks)
    if if_exists in ("append", "fail") or len(existing) == 0:
        yield from positioned  # "fail" has refused clashes already
        return
    for block, positions in positioned:
        stored = existing.lookup(block)
        hit = stored >= 0
        if hit.any():
            log.info("%d records are stored already (if_exists=%r)", hit.sum(), if_exists)
            if if_exists == "update":
                objects = [existing.objects[i] for i in stored[hit].tolist()]
                updates.append((block[hit], positions[hit], objects))
            else:
                outcome.skipped.append(positions[hit])
                bar.advance(int(hit.sum()))  # accounted for: the bar ends at the total
        yield block[~hit], positions[~hit]


def _exists_error(table: pd.DataFrame) -> AnnotationExistsError:
    return AnnotationExistsError(
        f"{len(table)} records are already stored on the sample ({_positions(table)}); "
        "nothing was "
        "sent. Pass if_exists='skip' to send only new records, 'update' to overwrite the "
        "stored values, or 'append' to store them again. The clashes are in .existing.",
        table,
    )


def _apply_updates(
    uploader: _Uploader,
    updates: list[tuple[pd.DataFrame, np.ndarray, list[dict[str, Any]]]],
    max_workers: int,
    outcome: _Outcome,
    bar: _Progress,
) -> None:
    """PATCH stored annotations whose value, unit or metadata differ from the input."""
    pool = _Pool(max_workers, "atomscale-patch")
    try:
        for number, (records, positions, stored_objects) in enumerate(updates):
            if uploader.stop.is_set():
                outcome.not_updated.append(Chunk.of(records, positions))
                continue
            try:
                _update_group(uploader, pool, records, positions, stored_objects, outcome, bar)
            except KeyboardInterrupt:
                # PATCH only sets values: what was not confirmed is "not updated".
                uploader.abandon()
                for records, positions, _ in updates[number:]:
                    outcome.not_updated.append(Chunk.of(records, positions))
                raise
    finally:
        pool.close()


def _update_group(
    uploader: _Uploader,
    pool: _Pool,
    records: pd.DataFrame,
    positions: np.ndarray,
    stored_objects: list[AnnotationObject],
    outcome: _Outcome,
    bar: _Progress,
) -> None:
    """PATCH one block's stored annotations, and write the updated rows into the result."""
    jobs = [
        (_changes(record, obj), obj)
        for (_, record), obj in zip(records.iterrows(), stored_objects, strict=True)
    ]
    futures = [
        pool.submit(_patch, uploader, obj.id, changes) if changes else None for changes, obj in jobs
    ]
    wait([future for future in futures if future is not None])
    answers: list[AnnotationObject] = []
    done = np.ones(len(jobs), dtype=bool)
    for i, (future, (_, obj)) in enumerate(zip(futures, jobs, strict=True)):
        if future is None:
            answers.append(obj)
            continue
        try:
            answers.append(future.result())
        except (TransportError, ApiError) as exc:
            done[i] = False
            outcome.error = outcome.error or exc
            uploader.stop.set()
    if (~done).any():
        outcome.not_updated.append(Chunk.of(records[~done], positions[~done]))
    if done.any():
        updated = annotation_frame(answers, index=records.index[done])
        uploader.result.put(
            positions[done],
            floats={c: updated[c].to_numpy() for c in FLOAT_COLUMNS},
            texts={
                c: (updated[c].cat.codes.to_numpy(), updated[c].cat.categories)
                for c in REPEATED_TEXT_COLUMNS
                if c != "physical_sample_id"
            },
            ids=updated["annotation_id"].tolist(),
            times=updated["last_updated"].array.asi8,
            metadata=updated["metadata"].to_numpy(),
            index=updated.index,
        )
        outcome.done.append(positions[done])
        bar.advance(int(done.sum()))


def _changes(record: pd.Series, stored: AnnotationObject) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    value = float(record["property_value"])
    if stored.property_value is None or stored.property_value != value:
        changes["property_value"] = value
    unit = record["property_unit"]
    unit = None if pd.isna(unit) else unit
    if unit != stored.property_unit:
        changes["property_unit"] = unit
    meta = record["metadata"]
    meta = None if not isinstance(meta, dict) else meta
    if meta is not None and meta != stored.annotation_metadata:
        changes["metadata"] = meta
    for fixed in ("char_source_type", "data_id"):
        mine = None if pd.isna(record[fixed]) else record[fixed]
        if mine is not None and mine != getattr(stored, fixed):
            log.warning(
                "annotation %s: %s differs (%r stored, %r given) but the API cannot change it",
                stored.id,
                fixed,
                getattr(stored, fixed),
                mine,
            )
    return changes


def _patch(uploader: _Uploader, annotation_id: str, changes: dict[str, Any]) -> AnnotationObject:
    path = f"physical_samples/{uploader.sample_id}/annotations/{check_uuid(annotation_id)}"
    body = _ENCODER.encode(changes)
    attempt, started = 1, time.monotonic()
    while True:
        try:
            raw = uploader.client.request("PATCH", path, data=body).content
            # One object: read as a list of one, with the checks of every other answer.
            return decode_annotations(b"[" + raw + b"]", "PATCH /" + path)[0]
        except (TransportError, ApiError) as exc:
            # PATCH sets values, so repeating it is harmless: retry any transient failure.
            if not _transient(exc) or not uploader.policy.allows(attempt, started):
                raise
            if not uploader.sleep(attempt, exc):
                raise
            attempt += 1


class _Pool:
    """Worker threads for requests that an interrupt abandons rather than waits for.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads on shutdown and again at
    interpreter exit, so Ctrl+C during an upload would wait for every request in flight
    (up to the client's deadline each). These threads are daemons: an interrupted upload
    returns at once, and a request still running ends with its deadline or the process.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._jobs = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

    def close(self) -> None:
        """Let the threads end once the jobs queued so far are done."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)


def _run(
    uploader: _Uploader,
    chunks: Iterator[Chunk],
    max_workers: int,
    outcome: _Outcome,
    bar: _Progress,
) -> None:
    """Send chunks on a pool, keeping a bounded number in flight (memory stays bounded).

    On Ctrl+C, the chunks in flight are accounted as unknown (a request may have taken
    effect) and the interrupt goes on at once.
    """
    in_flight: dict[Future[_Outcome], Chunk] = {}
    limit = max_workers * 2
    pool = _Pool(max_workers, "atomscale-upload")

    def collect(done: Iterable[Future[_Outcome]]) -> None:
        for future in done:
            del in_flight[future]
            result = future.result()
            outcome.merge(result)
            bar.advance(result.n_done)
            if result.error is not None:
                uploader.stop.set()

    try:
        for chunk in chunks:
            if uploader.stop.is_set():
                outcome.not_created.append(chunk)
                continue
            in_flight[pool.submit(uploader.send, chunk)] = chunk
            if len(in_flight) >= limit:
                collect(wait(in_flight, return_when=FIRST_COMPLETED).done)
        # Also when producing the next chunk failed: what is in flight gets accounted.
        collect(wait(in_flight).done)
    except KeyboardInterrupt:
        uploader.abandon()
        collect([future for future in list(in_flight) if future.done()])
        for future, chunk in in_flight.items():
            if future.cancel():  # queued, never sent
                outcome.not_created.append(chunk)
                continue
            # Rows written before the interrupt are created; nothing is written after.
            written = uploader.result.written(chunk.positions)
            outcome.done.append(chunk.positions[written])
            outcome.unknown.append(chunk.take(~written))
        raise
    except BaseException:
        uploader.stop.set()
        collect(wait(in_flight).done)
        raise
    finally:
        pool.close()


def _check_unaccounted(
    uploader: _Uploader, created: pd.DataFrame, listing: _Listing, *, strict: bool
) -> None:
    """Compare what the upload created with what the sample holds where it wrote.

    Two things can be wrong: an annotation reported created is not stored (a 200 that
    lied), or a position holds annotations that neither the state before the upload nor
    the upload account for (a timed-out request committed after its records were resent,
    or another writer). With ``strict``, raise :class:`UploadError` naming them;
    otherwise warn of the second (bulk create cannot be undone through the API).
    """
    try:
        objects = listing.fetch(uploader)
    except (TransportError, ApiError) as exc:
        if strict:
            raise
        log.warning("could not check for annotations stored twice (%s)", _describe(exc))
        return
    listed = _Answer.from_objects(objects)
    listed_ids = _IdSet()
    listed_ids.add(id_hashes(listed.ids))
    missing = ~listed_ids.contains(id_hashes(created["annotation_id"].tolist()))
    with uploader.lock:
        fresh = ~uploader.claimed.contains(id_hashes(listed.ids))
    mine = _key_frame(_record_keys(created), POSITION_KEY, count=False).drop_duplicates()
    theirs = _key_frame({c: v[fresh] for c, v in listed.keys.items()}, POSITION_KEY, count=False)
    theirs["_at"] = np.flatnonzero(fresh)
    at = np.sort(theirs.merge(mine, on=list(POSITION_KEY), how="inner")["_at"].to_numpy())
    extra = annotation_frame([objects[i] for i in at.tolist()], route=uploader.route)
    problems = []
    if missing.any() and strict:
        problems.append(
            f"{int(missing.sum())} annotations the server answered as created are not stored"
        )
    if len(extra):
        problems.append(
            f"{len(extra)} annotations at the positions of this upload's records were stored "
            f"by no one this upload knows of ({_positions(extra)}): a request that timed out "
            "and was committed after its records were sent again, or another upload to the "
            "same sample at the same time"
        )
    if not problems:
        return
    if not strict:
        log.warning("%s; their ids: %s", problems[0], ", ".join(extra["annotation_id"][:10]))
        return
    raise UploadError(
        f"the upload to sample {uploader.sample_id} was checked: "
        + "; ".join(problems)
        + ". .created holds the annotations that are stored, .unknown the records whose "
        "annotations are not, .extra the annotations no one accounts for.",
        created=created[~missing],
        not_created=_ordered_records([]),
        not_updated=_ordered_records([]),
        unknown=created.loc[missing, list(RECORD_COLUMNS)],
        cause=None,
        extra=extra,
    )


def _positions(table: pd.DataFrame, shown: int = 5) -> str:
    """A few of a table's positions, for a message."""
    text = ", ".join(
        f"{row.property_name} at ({row.coord_x:g}, {row.coord_y:g})"
        for row in table.head(shown).itertuples()
    )
    return text + (f" and {len(table) - shown} more" if len(table) > shown else "")


def _finish(
    outcome: _Outcome, sample_id: str, created: pd.DataFrame, whole: pd.DataFrame | None
) -> pd.DataFrame:
    failed = bool(
        outcome.error is not None or outcome.not_created or outcome.not_updated or outcome.unknown
    )
    if not failed:
        return created
    if whole is not None:
        # Every input record is accounted for: what is in no other group was not created
        # (or, with if_exists="skip"/"update", was stored before).
        settled = np.concatenate(
            outcome.done
            + [c.positions for c in outcome.not_updated + outcome.unknown]
            + outcome.skipped
            + [np.empty(0, dtype=np.int64)]
        )
        rest = np.setdiff1d(np.arange(len(whole)), settled)
        outcome.not_created = [Chunk.of(whole.iloc[rest], rest)]
    raise upload_error(
        f"the upload to sample {sample_id} stopped: {outcome.error}",
        created=created,
        not_created=_ordered_records(outcome.not_created),
        not_updated=_ordered_records(outcome.not_updated),
        unknown=_ordered_records(outcome.unknown),
        cause=outcome.error,
        mismatched=_mismatched_frame(outcome.mismatched),
    ) from outcome.error


def _mismatched_frame(pairs: list[tuple[Chunk, _Answer]]) -> pd.DataFrame | None:
    """What is stored for records stored with other content: id, position and value of
    each stored annotation, indexed by the record's label, in input order."""
    if not pairs:
        return None
    frame = pd.concat(
        [
            pd.DataFrame({"annotation_id": stored.ids, **stored.keys}, index=chunk.index)
            for chunk, stored in pairs
        ]
    )
    order = np.argsort(np.concatenate([chunk.positions for chunk, _ in pairs]), kind="stable")
    return frame.iloc[order]


def upload_error(
    headline: str,
    *,
    created: pd.DataFrame,
    not_created: pd.DataFrame,
    not_updated: pd.DataFrame,
    unknown: pd.DataFrame,
    cause: BaseException | None,
    mismatched: pd.DataFrame | None = None,
) -> UploadError:
    """The :class:`UploadError` of an upload that stopped: what happened, the counts of
    each group of records, and how to complete the upload."""
    lines = [
        headline,
        f"{len(created)} annotations were created or updated, {len(not_created)} were not created"
        + (f", {len(not_updated)} stored ones were not updated" if len(not_updated) else "")
        + (f", and {len(unknown)} may or may not have been stored" if len(unknown) else "")
        + ".",
        "Re-run the same upload with if_exists='skip' to complete it without duplicates"
        + (" (with if_exists='update' to also apply the updates)" if len(not_updated) else "")
        + "; .created, .not_created, .not_updated and .unknown hold the records"
        + (
            f"; .mismatched shows what is stored for {len(mismatched)} records stored with "
            "other content than sent."
            if mismatched is not None and len(mismatched)
            else "."
        ),
    ]
    return UploadError(
        "\n".join(lines),
        created=created,
        not_created=not_created,
        not_updated=not_updated,
        unknown=unknown,
        cause=cause,
        mismatched=mismatched,
    )


def _ordered_records(chunks: list[Chunk]) -> pd.DataFrame:
    if not chunks:
        return pd.DataFrame(
            {c: pd.Series(dtype="float64" if c in _FLOATS else object) for c in RECORD_COLUMNS}
        )
    frame = pd.concat([c.records for c in chunks])
    order = np.argsort(np.concatenate([c.positions for c in chunks]), kind="stable")
    return frame.iloc[order]


# -- progress ------------------------------------------------------------------------------
class _Progress:
    """A progress bar when asked for, or by default when a person is watching."""

    def __init__(
        self, progress: bool | Callable[[int, int | None], None] | None, total: int | None
    ) -> None:
        self.total = total
        self.done = 0
        self.callback: Callable[[int, int | None], None] | None = None
        self.bar: Any = None
        if callable(progress) and not isinstance(progress, bool):
            self.callback = progress
            return
        show = progress if progress is not None else _interactive()
        if not show:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.callback = _TextBar(total)
            return
        self.bar = tqdm(total=total, unit="annotation", desc="upload", leave=False)

    def advance(self, n: int) -> None:
        if n <= 0:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif isinstance(self.callback, _TextBar):
            self.callback.close()


class _TextBar:
    def __init__(self, total: int | None) -> None:
        self.total = total
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            width = 30
            filled = math.floor(width * done / total)
            text = f"\rupload [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        else:
            text = f"\rupload {done} annotations"
        sys.stderr.write(text)
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())
