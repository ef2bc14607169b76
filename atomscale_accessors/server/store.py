"""The SQLite store behind the local server.

One connection, guarded by a lock, serves every thread: SQLite serialises writers anyway,
and a single connection is the only way to share an in-memory database. Every statement
is parameterised, so names, units and metadata are stored literally whatever they hold.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _json
from .catalog import (
    CATALOG_SCHEMA,
    OWNER_ID,
    OWNER_NAME,
    Catalog,
    DuplicateName,
    DuplicateSampleName,
    ProjectNotFound,
    SampleNotFound,
    utc_now,
)

__all__ = [
    "ANNOTATION_FIELDS",
    "OWNER_ID",
    "OWNER_NAME",
    "AnnotationNotFound",
    "DuplicateName",
    "DuplicateSampleName",
    "ProjectNotFound",
    "SampleNotFound",
    "Store",
    "new_ids",
    "utc_now",
]

ANNOTATION_FIELDS = (
    "id",
    "physical_sample_id",
    "property_name",
    "property_value",
    "property_unit",
    "char_source_type",
    "coord_ref_frame",
    "coord_units",
    "coord_x",
    "coord_y",
    "coord_z",
    "data_id",
    "annotation_metadata",
    "last_updated",
    "version",
)
"""The 15 fields of every annotation object the server answers, in answer order."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    physical_sample_id TEXT NOT NULL REFERENCES samples(id),
    property_name TEXT NOT NULL,
    property_value REAL NOT NULL,
    property_unit TEXT,
    char_source_type TEXT,
    coord_ref_frame TEXT NOT NULL,
    coord_units TEXT,
    coord_x REAL,
    coord_y REAL,
    coord_z REAL,
    data_id TEXT,
    metadata TEXT,
    last_updated TEXT NOT NULL,
    version INTEGER NOT NULL,
    negative_zero INTEGER
);
CREATE INDEX IF NOT EXISTS annotations_by_sample ON annotations (physical_sample_id, seq);
"""

_INSERT_INTO = (
    "INSERT INTO annotations (id, physical_sample_id, property_name, property_value,"
    " property_unit, char_source_type, coord_ref_frame, coord_units, coord_x, coord_y,"
    " coord_z, data_id, metadata, last_updated, negative_zero, version) VALUES "
)
_ROW_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
_ROW_VARIABLES = _ROW_VALUES.count("?")
_MAX_ROWS_PER_INSERT = 1_000


@functools.lru_cache(maxsize=16)
def _insert_rows(n: int) -> str:
    """One INSERT of ``n`` rows. The sqlite3 module gives up the GIL and takes it back
    around every step of a statement: with one statement per row, a bulk of 5,000 did
    that 5,000 times, against threads that wanted the GIL meanwhile."""
    return _INSERT_INTO + ", ".join([_ROW_VALUES] * n)


_SELECT = (
    "SELECT id, physical_sample_id, property_name, property_value, property_unit,"
    " char_source_type, coord_ref_frame, coord_units, coord_x, coord_y, coord_z, data_id,"
    " metadata, last_updated, negative_zero, version FROM annotations"
)

# Columns a PATCH may set (request name -> column); the whitelist keeps SQL text fixed.
_PATCHABLE = {
    "property_name": "property_name",
    "property_value": "property_value",
    "property_unit": "property_unit",
    "coord_ref_frame": "coord_ref_frame",
    "coord_units": "coord_units",
    "coord_x": "coord_x",
    "coord_y": "coord_y",
    "coord_z": "coord_z",
    "metadata": "metadata",
}


class AnnotationNotFound(LookupError):
    """The sample has no annotation with the given id."""


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def new_ids(n: int) -> list[str]:
    """Make ``n`` time-ordered (version 7) UUIDs in canonical text form.

    Ids that start with the time land next to each other in the id index, so inserts
    stay fast as the table grows (random version 4 ids made a bulk insert twice as slow
    at 300,000 rows); the 74 random bits keep them unique.
    """
    ms = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{ms[:8]}-{ms[8:]}-7"
    h = os.urandom(10 * n).hex()
    v = _VARIANT
    return [
        f"{head}{h[i : i + 3]}-{v[h[i + 3]]}{h[i + 4 : i + 7]}-{h[i + 7 : i + 19]}"
        for i in range(0, 20 * n, 20)
    ]


def _metadata_text(metadata: Mapping[str, Any] | None) -> str | None:
    return None if metadata is None else _json.dumps(metadata).decode()


class Store(Catalog):
    """Samples, projects and annotations in one SQLite database.

    Parameters
    ----------
    path : str, os.PathLike or None
        Database file, created if missing; ``None`` for a private in-memory database that
        lives as long as this object.

    Notes
    -----
    Answers are plain dicts shaped like the service's JSON objects, except that an
    annotation's ``annotation_metadata`` is stored JSON text wrapped by
    :func:`._json.raw_object` (so it is encoded without being parsed again) when the
    ``raw_metadata`` flag of a read asks for it, and a decoded dict otherwise.

    Examples
    --------
    >>> store = Store()
    >>> sample = store.create_sample("wafer-1")
    >>> rows = store.create_annotations(
    ...     sample["id"], [{"property_name": "thickness", "property_value": 12.5}]
    ... )
    >>> rows[0]["coord_ref_frame"], rows[0]["version"]
    ('sample_relative', '1')
    >>> store.close()
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        target = ":memory:" if self.path is None else str(self.path)
        # Autocommit mode: transactions are opened explicitly, so a bulk insert is one.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            target, check_same_thread=False, isolation_level=None
        )
        with self._lock:
            conn = self._conn
            if self.path is not None:
                # WAL with NORMAL sync: a commit is an append, durable across a process stop
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(CATALOG_SCHEMA + _SCHEMA)
            variables = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._rows_per_insert = max(1, min(_MAX_ROWS_PER_INSERT, variables // _ROW_VARIABLES))

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._conn is None

    def close(self) -> None:
        """Close the connection; an in-memory database is gone after this."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is closed")
        return self._conn

    # -- annotations -------------------------------------------------------------------

    def create_annotations(
        self, sample_id: str, bodies: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """Store annotations for one sample in one transaction, all or nothing.

        Parameters
        ----------
        sample_id : str
            Canonical UUID text of an existing sample.
        bodies : sequence of mapping
            Validated annotation bodies (request field names: ``metadata``, not
            ``annotation_metadata``; ``data_id`` a :class:`uuid.UUID` or text).

        Returns
        -------
        list of dict
            The created annotation objects, in the order of ``bodies``, with
            ``annotation_metadata`` as a raw JSON object (see :func:`._json.raw_object`).

        Raises
        ------
        SampleNotFound
            No sample has this id (nothing is stored).
        """
        now = utc_now()
        ids = new_ids(len(bodies))
        rows = []
        for annotation_id, body in zip(ids, bodies, strict=True):
            get = body.get
            value = body["property_value"]
            x, y, z = get("coord_x"), get("coord_y"), get("coord_z")
            # 0.0 == -0.0, so this cheap test lets only the rare zeros through
            mask = _zero_signs(value, x, y, z) if 0.0 in (value, x, y, z) else None
            data_id = get("data_id")
            metadata = get("metadata")
            rows.append(
                (
                    annotation_id,
                    sample_id,
                    body["property_name"],
                    value,
                    get("property_unit"),
                    get("char_source_type"),
                    get("coord_ref_frame") or "sample_relative",
                    get("coord_units"),
                    x,
                    y,
                    z,
                    None if data_id is None else str(data_id),
                    None if metadata is None else _json.dumps(metadata).decode(),
                    now,
                    mask,
                )
            )
        with self._writing(sample_id) as conn:
            per = self._rows_per_insert
            for start in range(0, len(rows), per):
                batch = rows[start : start + per]
                conn.execute(_insert_rows(len(batch)), [v for row in batch for v in row])
        return [_annotation_dict((*row, 1), raw_metadata=True) for row in rows]

    def list_annotations(
        self,
        sample_id: str,
        *,
        property_name: str | None = None,
        char_source_type: str | None = None,
        x_range: tuple[float | None, float | None] = (None, None),
        y_range: tuple[float | None, float | None] = (None, None),
        raw_metadata: bool = False,
    ) -> list[dict[str, Any]]:
        """A sample's annotations in creation order, filtered.

        A coordinate range filters only when both of its bounds are given; bounds are
        inclusive and an annotation without that coordinate is left out.

        Raises
        ------
        SampleNotFound
            No sample has this id.
        """
        clauses = ["physical_sample_id = ?"]
        params: list[Any] = [sample_id]
        if property_name is not None:
            clauses.append("property_name = ?")
            params.append(property_name)
        if char_source_type is not None:
            clauses.append("char_source_type = ?")
            params.append(char_source_type)
        for column, (low, high) in (("coord_x", x_range), ("coord_y", y_range)):
            if low is not None and high is not None:
                clauses.append(f"{column} BETWEEN ? AND ?")
                params.extend((low, high))
        sql = f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY seq"
        with self._lock:
            conn = self._connection()
            if not self._sample_exists(conn, sample_id):
                raise SampleNotFound(sample_id)
            rows = conn.execute(sql, params).fetchall()
        return [_annotation_dict(row, raw_metadata=raw_metadata) for row in rows]

    def update_annotation(
        self, sample_id: str, annotation_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Apply a partial update, bump ``version`` and ``last_updated``.

        Parameters
        ----------
        changes : mapping
            Validated PATCH body; keys outside the updatable fields raise ``KeyError``.

        Raises
        ------
        SampleNotFound, AnnotationNotFound
            The sample, or the annotation within that sample, does not exist.
        """
        assignments = []
        params: list[Any] = []
        keep_signs, set_signs = _ALL_SIGNS, 0
        for key, value in changes.items():
            column = _PATCHABLE[key]
            if key == "metadata":
                value = _metadata_text(value)
            elif key in _SIGN_BITS:
                value = _float_or_none(value)
                keep_signs &= ~_SIGN_BITS[key]
                if value == 0.0 and math.copysign(1.0, value) < 0:
                    set_signs |= _SIGN_BITS[key]
            assignments.append(f"{column} = ?")
            params.append(value)
        assignments += [
            "negative_zero = (COALESCE(negative_zero, 0) & ?) | ?",
            "version = version + 1",
            "last_updated = ?",
        ]
        params += [keep_signs, set_signs, utc_now(), annotation_id, sample_id]
        sql = (
            f"UPDATE annotations SET {', '.join(assignments)}"
            " WHERE id = ? AND physical_sample_id = ?"
        )
        with self._writing(sample_id) as conn:
            cursor = conn.execute(sql, params)
            if cursor.rowcount != 1:
                raise AnnotationNotFound(annotation_id)
            row = conn.execute(f"{_SELECT} WHERE id = ?", (annotation_id,)).fetchone()
        return _annotation_dict(row)

    @contextlib.contextmanager
    def _writing(self, sample_id: str) -> Iterator[sqlite3.Connection]:
        """One write transaction on a sample that must exist: committed whole, or not at all."""
        with self._lock:
            conn = self._connection()
            if not self._sample_exists(conn, sample_id):
                raise SampleNotFound(sample_id)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def annotation_count(self, sample_id: str | None = None) -> int:
        """Rows stored for one sample, or in all."""
        with self._lock:
            conn = self._connection()
            if sample_id is None:
                return conn.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
            return conn.execute(
                "SELECT COUNT(*) FROM annotations WHERE physical_sample_id = ?", (sample_id,)
            ).fetchone()[0]

    def stored_annotations(self, sample_id: str) -> list[dict[str, Any]]:
        """All annotations of a sample with decoded metadata; ``[]`` for an unknown sample."""
        try:
            return self.list_annotations(sample_id)
        except SampleNotFound:
            return []


# Bits of the negative_zero column: which of the numbers is -0.0.
_SIGN_BITS = {"property_value": 1, "coord_x": 2, "coord_y": 4, "coord_z": 8}
_ALL_SIGNS = 15


def _zero_signs(*values: float | None) -> int | None:
    """Bit mask of the values (property_value, coord_x, coord_y, coord_z) that are -0.0."""
    mask = 0
    for bit, value in zip((1, 2, 4, 8), values, strict=True):
        if value == 0.0 and math.copysign(1.0, value) < 0:
            mask |= bit
    return mask or None


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _annotation_dict(row: Iterable[Any], *, raw_metadata: bool = False) -> dict[str, Any]:
    (
        annotation_id,
        sample_id,
        property_name,
        property_value,
        property_unit,
        char_source_type,
        coord_ref_frame,
        coord_units,
        coord_x,
        coord_y,
        coord_z,
        data_id,
        metadata,
        last_updated,
        negative_zero,
        version,
    ) = row
    if negative_zero:
        # SQLite stores -0.0 as the integer 0, losing the sign; the mask restores it
        if negative_zero & 1:
            property_value = -0.0
        if negative_zero & 2:
            coord_x = -0.0
        if negative_zero & 4:
            coord_y = -0.0
        if negative_zero & 8:
            coord_z = -0.0
    return {
        "id": annotation_id,
        "physical_sample_id": sample_id,
        "property_name": property_name,
        "property_value": property_value,
        "property_unit": property_unit,
        "char_source_type": char_source_type,
        "coord_ref_frame": coord_ref_frame,
        "coord_units": coord_units,
        "coord_x": coord_x,
        "coord_y": coord_y,
        "coord_z": coord_z,
        "data_id": data_id,
        "annotation_metadata": (
            _json.raw_object(metadata)
            if raw_metadata
            else (None if metadata is None else _json.loads(metadata))
        ),
        "last_updated": last_updated,
        "version": str(version),
    }
