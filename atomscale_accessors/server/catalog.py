"""Samples and projects in the local server's SQLite database.

:class:`Catalog` is the half of :class:`~.store.Store` that knows samples, projects and
which samples a project tracks; the other half keeps annotations. Both share one
connection and one lock, which the store sets up.

Sample and project objects are answered shaped as the official SDK reads them: a sample's
``projects`` is a list of ``{id, name}``, its ``detail_notes`` an object
``{content, last_updated}`` or null; a project's ``detail_note`` likewise.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CATALOG_SCHEMA",
    "OWNER_ID",
    "OWNER_NAME",
    "Catalog",
    "DuplicateName",
    "DuplicateSampleName",
    "ProjectNotFound",
    "SampleNotFound",
    "utc_now",
]

OWNER_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "atomscale-accessors/local-server"))
OWNER_NAME = "local"

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    created_datetime TEXT NOT NULL,
    last_updated TEXT NOT NULL,
    version INTEGER NOT NULL,
    detail_notes TEXT
);
CREATE TABLE IF NOT EXISTS projects (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    created_datetime TEXT NOT NULL,
    last_updated TEXT NOT NULL,
    detail_note TEXT
);
CREATE TABLE IF NOT EXISTS project_samples (
    project_id TEXT NOT NULL REFERENCES projects(id),
    physical_sample_id TEXT NOT NULL REFERENCES samples(id),
    PRIMARY KEY (project_id, physical_sample_id)
);
"""

_SAMPLE_SELECT = (
    "SELECT id, name, created_datetime, last_updated, version, detail_notes FROM samples"
)
_PROJECT_SELECT = (
    "SELECT p.id, p.name, p.created_datetime, p.last_updated, p.detail_note,"
    " (SELECT COUNT(*) FROM project_samples m WHERE m.project_id = p.id) FROM projects p"
)


class SampleNotFound(LookupError):
    """No physical sample has the given id."""


class ProjectNotFound(LookupError):
    """No project has the given id."""


class DuplicateName(ValueError):
    """A sample or project with that exact name exists; ``existing_id`` is its id."""

    kind = "project"

    def __init__(self, name: str, existing_id: str) -> None:
        super().__init__(f"a {self.kind} named {name!r} already exists")
        self.name = name
        self.existing_id = existing_id


class DuplicateSampleName(DuplicateName):
    """A sample with that name exists; ``sample_id`` is its id."""

    kind = "physical sample"

    @property
    def sample_id(self) -> str:
        return self.existing_id


_INSERTS: dict[type[DuplicateName], tuple[str, str]] = {
    DuplicateSampleName: (
        "samples",
        "INSERT INTO samples (id, name, created_datetime, last_updated, version, detail_notes)"
        " VALUES (?, ?, ?, ?, 1, ?)",
    ),
    DuplicateName: (
        "projects",
        "INSERT INTO projects (id, name, created_datetime, last_updated, detail_note)"
        " VALUES (?, ?, ?, ?, ?)",
    ),
}


def utc_now() -> str:
    """The current time as UTC ISO 8601 with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _note(content: str | None, when: str) -> dict[str, Any] | None:
    # Notes are set only when their sample or project is made: that is their time too.
    return None if content is None else {"content": content, "last_updated": when}


class Catalog:
    """Samples, projects and project membership; mixed into :class:`~.store.Store`."""

    _lock: threading.Lock

    def _connection(self) -> sqlite3.Connection:  # pragma: no cover - Store defines it
        raise NotImplementedError

    # -- samples -----------------------------------------------------------------------

    def create_sample(self, name: str, detail_notes: str | None = None) -> dict[str, Any]:
        """Create a physical sample.

        Raises
        ------
        DuplicateSampleName
            A sample with exactly that name exists.
        """
        sample_id, now = self._insert_named(DuplicateSampleName, name, detail_notes)
        return self._sample_dict((sample_id, name, now, now, 1, detail_notes), [])

    def list_samples(self, sample_id: str | None = None) -> list[dict[str, Any]]:
        """All samples in creation order, or the one with ``sample_id`` (``[]`` if none)."""
        with self._lock:
            conn = self._connection()
            if sample_id is None:
                rows = conn.execute(f"{_SAMPLE_SELECT} ORDER BY seq").fetchall()
            else:
                rows = conn.execute(f"{_SAMPLE_SELECT} WHERE id = ?", (sample_id,)).fetchall()
            return self._samples_with_projects(conn, rows)

    def get_sample(self, sample_id: str) -> dict[str, Any]:
        """One sample.

        Raises
        ------
        SampleNotFound
            No sample has this id.
        """
        found = self.list_samples(sample_id)
        if not found:
            raise SampleNotFound(sample_id)
        return found[0]

    def sample_exists(self, sample_id: str) -> bool:
        """Whether a sample with this id exists."""
        with self._lock:
            return self._sample_exists(self._connection(), sample_id)

    @staticmethod
    def _sample_exists(conn: sqlite3.Connection, sample_id: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM samples WHERE id = ?", (sample_id,)).fetchone() is not None
        )

    # -- projects ----------------------------------------------------------------------

    def create_project(self, name: str, detail_note: str | None = None) -> dict[str, Any]:
        """Create a project (the service documents no route for this: tests and demos only).

        Raises
        ------
        DuplicateName
            A project with exactly that name exists.
        """
        project_id, now = self._insert_named(DuplicateName, name, detail_note)
        return self._project_dict((project_id, name, now, now, detail_note, 0))

    def list_projects(self) -> list[dict[str, Any]]:
        """All projects in creation order, each with its number of samples."""
        with self._lock:
            rows = self._connection().execute(f"{_PROJECT_SELECT} ORDER BY p.seq").fetchall()
        return [self._project_dict(row) for row in rows]

    def project_samples(self, project_id: str) -> list[dict[str, Any]]:
        """The samples a project tracks, in the samples' creation order.

        Raises
        ------
        ProjectNotFound
            No project has this id.
        """
        with self._lock:
            conn = self._connection()
            self._check_project(conn, project_id)
            rows = conn.execute(
                f"{_SAMPLE_SELECT} WHERE id IN (SELECT physical_sample_id FROM project_samples"
                " WHERE project_id = ?) ORDER BY seq",
                (project_id,),
            ).fetchall()
            return self._samples_with_projects(conn, rows)

    def add_sample_to_project(self, project_id: str, sample_id: str) -> dict[str, Any]:
        """Make a project track a sample; adding it again changes nothing.

        Returns
        -------
        dict
            The project object, with its updated sample count.

        Raises
        ------
        ProjectNotFound, SampleNotFound
            The project or the sample does not exist.
        """
        with self._lock:
            conn = self._connection()
            self._check_project(conn, project_id)
            if not self._sample_exists(conn, sample_id):
                raise SampleNotFound(sample_id)
            added = conn.execute(
                "INSERT OR IGNORE INTO project_samples (project_id, physical_sample_id)"
                " VALUES (?, ?)",
                (project_id, sample_id),
            ).rowcount
            if added:
                conn.execute(
                    "UPDATE projects SET last_updated = ? WHERE id = ?", (utc_now(), project_id)
                )
            row = conn.execute(f"{_PROJECT_SELECT} WHERE p.id = ?", (project_id,)).fetchone()
        return self._project_dict(row)

    # -- helpers -----------------------------------------------------------------------

    def _insert_named(
        self, duplicate: type[DuplicateName], name: str, note: str | None
    ) -> tuple[str, str]:
        """Insert a sample or project row; return its id and time. A name taken raises
        ``duplicate`` (whose kind says which table)."""
        table, sql = _INSERTS[duplicate]
        new_id, now = str(uuid.uuid4()), utc_now()
        with self._lock:
            conn = self._connection()
            try:
                conn.execute(sql, (new_id, name, now, now, note))
            except sqlite3.IntegrityError:
                row = conn.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()
                if row is None:  # pragma: no cover - the only unique column left is the id
                    raise
                raise duplicate(name, row[0]) from None
        return new_id, now

    @staticmethod
    def _check_project(conn: sqlite3.Connection, project_id: str) -> None:
        if conn.execute("SELECT 1 FROM projects WHERE id = ?", (project_id,)).fetchone() is None:
            raise ProjectNotFound(project_id)

    def _samples_with_projects(
        self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]
    ) -> list[dict[str, Any]]:
        memberships: dict[str, list[dict[str, str]]] = defaultdict(list)
        if rows:
            for sample_id, project_id, name in conn.execute(
                "SELECT m.physical_sample_id, p.id, p.name FROM project_samples m"
                " JOIN projects p ON p.id = m.project_id ORDER BY p.seq"
            ):
                memberships[sample_id].append({"id": project_id, "name": name})
        return [self._sample_dict(row, memberships.get(row[0], [])) for row in rows]

    @staticmethod
    def _sample_dict(row: Sequence[Any], projects: list[dict[str, str]]) -> dict[str, Any]:
        sample_id, name, created, updated, version, notes = row
        return {
            "id": sample_id,
            "name": name,
            "created_datetime": created,
            "last_updated": updated,
            "version": str(version),
            "owner_id": OWNER_ID,
            "owner_name": OWNER_NAME,
            "num_data_items": 0,  # the local server keeps no data items
            "growth_instrument": None,
            "target_material": None,
            "projects": projects,
            "detail_notes": _note(notes, created),
        }

    @staticmethod
    def _project_dict(row: Sequence[Any]) -> dict[str, Any]:
        project_id, name, created, updated, note, count = row
        return {
            "id": project_id,
            "name": name,
            "physical_sample_count": count,
            "owner_id": OWNER_ID,
            "owner_name": OWNER_NAME,
            "detail_note": _note(note, created),
            "created_datetime": created,
            "last_updated": updated,
        }
