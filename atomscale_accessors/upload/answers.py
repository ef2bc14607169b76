"""Bulk answers and listings read into arrays (typed: what cannot be read is an
:class:`~atomscale_accessors.errors.ApiError`), and the fast path for the usual answer."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from operator import attrgetter
from typing import Any, Literal

import msgspec
import numpy as np

from ..frames import (
    AnnotationObject,
    decode_annotations,
)
from ..keys import MATCH_KEY, key_dtype
from ..schemas import (
    COORD_COLUMNS,
    POSITION_KEY,
)
from .chunks import Chunk
from .columns import Columns

__all__ = [
    "DECODE_STORED",
    "Answer",
    "IdSet",
    "Stored",
    "expected_answer",
    "id_hashes",
    "repeated",
]

log = logging.getLogger(__name__)


class Stored(msgspec.Struct, gc=False):
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


DECODE_STORED = msgspec.json.Decoder(list[Stored])


class Answer:
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
    def decode(cls, raw: bytes, route: str) -> Answer:
        """Parse a JSON array of annotation objects answered to ``route``; an
        :class:`ApiError` naming the field and value when it is not one."""
        items = decode_annotations(raw, route, DECODE_STORED)
        get = {name: attrgetter(name) for name in Stored.__struct_fields__}
        return cls(
            list(map(get["id"], items)),
            list(map(get["last_updated"], items)),
            list(map(get["version"], items)),
            {
                column: np.array(list(map(get[column], items)), dtype=key_dtype(column))
                for column in MATCH_KEY
            },
        )

    @classmethod
    def from_objects(cls, objects: list[AnnotationObject]) -> Answer:
        """Annotation objects already parsed."""
        return cls(
            [obj.id for obj in objects],
            [obj.last_updated for obj in objects],
            [obj.version for obj in objects],
            {
                column: np.array(list(map(attrgetter(column), objects)), dtype=key_dtype(column))
                for column in MATCH_KEY
            },
        )

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: np.ndarray) -> Answer:
        if len(positions) == len(self) and (positions == np.arange(len(self))).all():
            return self
        pick = positions.tolist()
        return Answer(
            [self.ids[i] for i in pick],
            [self.last_updated[i] for i in pick],
            [self.versions[i] for i in pick],
            {column: values[positions] for column, values in self.keys.items()},
        )

    def without(self, ids: IdSet) -> Answer:
        """The annotations whose id is not in ``ids``."""
        keep = ~ids.contains(id_hashes(self.ids))
        return self if keep.all() else self.take(np.flatnonzero(keep))


def expected_answer(
    chunk: Chunk, raw: bytes, *, guess_shared: bool = True
) -> tuple[Answer | None, bool | None]:
    """The answer to a chunk, when it is the usual one: one annotation per record, in the
    order sent, with every key field as sent. None when it is anything else.

    The text key fields are checked while parsing (as literal values), and the floats
    compared as arrays afterwards, so no key field becomes a column of Python objects.
    With ``guess_shared``, the first annotation's time and version are taken as literal values
    too: a bulk answer usually has one of each (one transaction), and then no row's time
    or version is made into an object either. When that guess fails, the answer is
    parsed again without it. Returns the answer (or None) and whether the guess held
    (None: not tried).
    """
    key_spec = _key_spec(chunk.columns)
    if key_spec is None:
        return None, None
    items, shared, guessed = _parse_expected(raw, key_spec, guess_shared=guess_shared)
    if items is None or len(items) != len(chunk):
        return None, guessed
    for column, spec in [("property_value", float), *zip(COORD_COLUMNS, key_spec[3:], strict=True)]:
        if spec is float:
            answered = np.fromiter(map(attrgetter(column), items), np.float64, len(items))
            if not np.array_equal(answered, chunk.columns.floats[column]):
                return None, guessed
    time, version = shared
    answer = Answer(
        list(map(_GET_ID, items)),
        [time] * len(items) if time is not None else list(map(_GET_TIME, items)),
        [version] * len(items) if version is not None else list(map(_GET_VERSION, items)),
        {},
    )
    return answer, guessed


def _key_spec(columns: Columns) -> list[Any] | None:
    """What each key field of the usual answer holds: the one value of each text key, and
    for each coordinate float or None (unset). None when the records have several values
    of a text key, or a coordinate set in some and not in others: no usual answer then."""
    key_spec: list[Any] = []
    for column in _TEXT_KEYS:
        same, value = columns.constant(column)
        if not same:
            return None
        key_spec.append(value)
    for column in COORD_COLUMNS:
        isnan = np.isnan(columns.floats[column])
        if isnan.all():
            key_spec.append(None)
        elif isnan.any():
            return None
        else:
            key_spec.append(float)
    return key_spec


def _parse_expected(
    raw: bytes, key_spec: list[Any], *, guess_shared: bool
) -> tuple[list[Any] | None, tuple[str | None, str | None], bool | None]:
    """Parse an answer as the usual one: its items (None when it is not), the time and
    version shared by every item (None when each has its own), and whether the guess of
    a shared time and version held (None: not tried)."""
    shared = (_first_text(raw, b'"last_updated":'), _first_text(raw, b'"version":'))
    guessed = None
    time, version = shared
    if guess_shared and time is not None and version is not None:
        try:
            return _expected_decoder(tuple(key_spec), (time, version)).decode(raw), shared, True
        except msgspec.DecodeError:
            guessed = False
    try:
        return _expected_decoder(tuple(key_spec)).decode(raw), (None, None), guessed
    except msgspec.DecodeError:  # ValidationError too: something else than expected
        return None, (None, None), guessed


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
    key_spec: tuple[Any, ...], shared: tuple[str, str] | None = None
) -> msgspec.json.Decoder:
    """A decoder of bulk answers whose text key fields must equal given values (None:
    null or absent) and whose coordinates must be numbers (``float``) or null (None);
    with ``shared``, every time and version must be these."""
    if shared is None:
        return _cached_decoder(key_spec)
    return _build_decoder(key_spec, shared)


@functools.lru_cache(maxsize=64)
def _cached_decoder(key_spec: tuple[Any, ...]) -> msgspec.json.Decoder:
    return _build_decoder(key_spec, None)


def _build_decoder(
    key_spec: tuple[Any, ...], shared: tuple[str, str] | None
) -> msgspec.json.Decoder:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("id", str)]
    for column, spec in zip((*_TEXT_KEYS, *COORD_COLUMNS), key_spec, strict=True):
        if spec is None:
            fields.append((column, None, None))
        else:
            fields.append((column, float if spec is float else Literal[spec]))
    fields.append(("property_value", float))
    if shared is None:
        fields += [("last_updated", str | None, None), ("version", str | int | float | None, None)]
    else:
        fields += [("last_updated", Literal[shared[0]]), ("version", Literal[shared[1]])]
    expected = msgspec.defstruct("_Expected", fields, kw_only=True, gc=False)
    # A type made at run time, which mypy cannot check as one.
    return msgspec.json.Decoder(list[expected])  # type: ignore[valid-type]


class IdSet:
    """A set of annotation ids held as 64-bit hashes: an upload of millions of annotations
    remembers every id it was given, and a set of strings would cost ~100 bytes each.

    The hashes live in one open-addressing table (a power of two of slots, at most half
    of them used, triangular probing), added and looked up a whole array at a time. Told
    how many ids to ``expect``, it is allocated once: adding a chunk's ids and asking
    about the next chunk's cost about the chunk's size, and no array of the set's size is
    ever copied or freed while an upload runs (freeing such arrays over and over would
    leave the process's memory fragmented).

    Two different ids share a hash with odds of about n**2 / 2**65 (one in a million for
    four million ids); the cost of that is one record reconciled by a listing.
    """

    def __init__(self, ids: Iterable[str] = (), *, expect: int = 0) -> None:
        hashes = id_hashes(list(ids))
        self._table = np.zeros(_slots_for(max(expect, len(hashes))), dtype=np.int64)
        self._size = 0
        self.add(hashes)

    def __len__(self) -> int:
        return self._size

    def add(self, hashes: np.ndarray) -> None:
        if len(hashes):
            keys = np.unique(_keys(hashes))
            self._make_room(len(keys))
            self._insert(keys)

    def claim(self, hashes: np.ndarray) -> np.ndarray:
        """Add the hashes that are new to the set and appear once in ``hashes``; for each
        hash, whether it was added. (One sort, to find hashes given twice, and one probe
        per hash: no separate lookup.)"""
        if not len(hashes):
            return np.zeros(0, dtype=bool)
        keys = _keys(hashes)
        ranked = np.sort(keys)
        if not (ranked[1:] == ranked[:-1]).any():  # the usual answer: no id twice
            self._make_room(len(keys))
            return self._insert(keys)
        keys, where, counts = np.unique(keys, return_inverse=True, return_counts=True)
        self._make_room(len(keys))
        added = np.zeros(len(keys), dtype=bool)
        once = counts == 1
        added[once] = self._insert(keys[once])
        return added[where.reshape(-1)]

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """For each hash, whether it is in the set."""
        found = np.zeros(len(hashes), dtype=bool)
        if not len(hashes) or not self._size:
            return found
        table, mask = self._table, len(self._table) - 1
        keys = _keys(hashes)
        todo = np.arange(len(keys))
        at = keys & mask
        step = 0
        while len(todo):
            held = table[at]
            hit = held == keys
            found[todo[hit]] = True
            going = ~hit & (held != _EMPTY)  # an empty slot ends the search
            step += 1
            todo, keys, at = todo[going], keys[going], (at[going] + step) & mask
        return found

    def _make_room(self, n: int) -> None:
        """Grow the table, when needed, so that ``n`` more keys keep it at most half full."""
        if 2 * (self._size + n) > len(self._table):
            held = self._table[self._table != _EMPTY]
            self._table = np.zeros(_slots_for(2 * (self._size + n)), dtype=np.int64)
            self._size = 0
            self._insert(held)

    def _insert(self, keys: np.ndarray) -> np.ndarray:
        """Put distinct keys into the table (with room for them); which were new to it."""
        table, mask = self._table, len(self._table) - 1
        new = np.zeros(len(keys), dtype=bool)
        todo = np.arange(len(keys))
        at = keys & mask
        step = 0
        while len(todo):
            wanted = keys[todo]
            held = table[at]
            empty = held == _EMPTY
            if empty.any():
                table[at[empty]] = wanted[empty]
                held = table[at]  # read again: where keys met, one of them won
                new[todo[empty & (held == wanted)]] = True
            going = held != wanted
            step += 1
            todo, at = todo[going], (at[going] + step) & mask
        self._size += int(np.count_nonzero(new))
        return new


# A slot holding 0 is empty; a hash of 0 is kept as 1 (one more way for two ids to meet).
_EMPTY = 0
_MIN_SLOTS = 1024


def _slots_for(size: int) -> int:
    """A power of two of slots at least twice ``size``: triangular probing then visits
    every slot, and a search ends after about two looks on average."""
    return max(_MIN_SLOTS, 1 << (2 * size - 1).bit_length())


def _keys(hashes: np.ndarray) -> np.ndarray:
    return np.where(hashes == _EMPTY, 1, hashes)


def id_hashes(ids: list[str]) -> np.ndarray:
    """The 64-bit hashes of annotation ids, as :class:`IdSet` holds them."""
    return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))


def repeated(hashes: np.ndarray) -> np.ndarray:
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
