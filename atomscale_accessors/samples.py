"""Samples and projects: a name or UUID to a sample id, creation that survives a race, and
listings as DataFrames.

Names follow the official SDK's rules (``Client._resolve_physical_sample``), so that a
name means the same sample in both libraries: blanks around it are ignored, case is
ignored, a UUID must exist, and a new name is created only when asked
(``create=True``). Two callers creating one new name at once both end up with the one
sample: the server answers the later one 409 with the winner's id, which it takes.

Where this library is stricter than the SDK: a name that matches several samples is an
error listing them (the SDK takes the first), and an unknown name is an error suggesting
close names unless ``create=True`` (the SDK creates it, so a typo makes a new sample).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from .client import Client, resolve_client
from .errors import (
    AmbiguousNameError,
    ApiError,
    InvalidIdentifierError,
    ProjectNotFoundError,
    SampleNotFoundError,
    TransportError,
)
from .failures import quote as _shown
from .fields import is_uuid
from .frames import TEXT_DTYPE, column_series

__all__ = [
    "CREATE_HINT",
    "PROJECT_COLUMNS",
    "SAMPLE_COLUMNS",
    "SampleResolver",
    "projects",
    "resolve_project",
    "resolve_sample",
    "samples",
    "samples_named",
]

#: Columns of :func:`samples`, in order.
SAMPLE_COLUMNS = (
    "physical_sample_id",
    "name",
    "project_id",
    "project_name",
    "created",
    "last_updated",
    "owner_name",
    "num_data_items",
    "notes",
)
#: Columns of :func:`projects`, in order.
PROJECT_COLUMNS = (
    "project_id",
    "name",
    "physical_sample_count",
    "owner_name",
    "notes",
    "last_updated",
)
# Text in a string dtype: pandas' own on pandas 3, the "string" extension type before.
_TEXT = TEXT_DTYPE if isinstance(TEXT_DTYPE, pd.StringDtype) else pd.StringDtype()
_TIMES = ("created", "last_updated")
_COUNTS = ("num_data_items", "physical_sample_count")
_SUGGESTIONS = 5
_LISTED = 10  # matches of an ambiguous name shown in its message
#: How an unknown name's error says to create it (the command line words it its own way).
CREATE_HINT = "pass create=True to create it"


def _key(name: str) -> str:
    """What two names must share to mean one sample: the SDK strips and lower-cases."""
    return name.strip().lower()


def _checked(value: Any, what: str) -> str:
    """``value`` stripped, refused before anything is sent when it cannot name anything."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(
            f"a {what} is given by its name or UUID as a string, not {type(value).__name__}"
        )
    text = value.strip()
    if not text:
        raise InvalidIdentifierError(f"a {what} name must not be empty, got {_shown(value)}")
    return text.lower() if is_uuid(text) else text


def _close(wanted: str, names: Iterable[str]) -> list[str]:
    """Existing names close to ``wanted``, best first, compared as :func:`_key` does."""
    by_key: dict[str, str] = {}
    for name in names:
        by_key.setdefault(_key(name), name)
    found = difflib.get_close_matches(_key(wanted), list(by_key), n=_SUGGESTIONS, cutoff=0.6)
    return [by_key[key] for key in found]


def _suggestion_text(suggestions: list[str]) -> str:
    if not suggestions:
        return ""
    return "; did you mean " + ", ".join(_shown(s) for s in suggestions) + "?"


def _one(matches: Sequence[Mapping[str, Any]], wanted: str, what: str) -> Mapping[str, Any] | None:
    """The one object among ``matches``, ``None`` for none, an error for several."""
    if len(matches) > 1:
        found = {str(m["id"]): str(m.get("name")) for m in matches}
        listed = ", ".join(f"{_shown(name)} ({id_})" for id_, name in list(found.items())[:_LISTED])
        if len(found) > _LISTED:
            listed += f" and {len(found) - _LISTED:,} more"
        raise AmbiguousNameError(
            f"{len(found)} {what}s match {_shown(wanted)} when case and blanks are ignored: "
            f"{listed}; give the UUID of the one you mean",
            name=wanted,
            matches=found,
        )
    return matches[0] if matches else None


# -- projects ---------------------------------------------------------------------------------
def _find_project(client: Client, project: Any) -> Mapping[str, Any]:
    wanted = _checked(project, "project")
    listed = client.list_projects()
    if is_uuid(wanted):
        matches = [p for p in listed if str(p.get("id", "")).lower() == wanted]
    else:
        matches = [p for p in listed if _key(str(p.get("name", ""))) == _key(wanted)]
    found = _one(matches, wanted, "project")
    if found is not None:
        return found
    suggestions = [] if is_uuid(wanted) else _close(wanted, (str(p["name"]) for p in listed))
    raise ProjectNotFoundError(
        f"no project {'with id' if is_uuid(wanted) else 'named'} {_shown(wanted)}"
        f"{_suggestion_text(suggestions)} (projects are made on the platform; the API has no "
        "route to create one)",
        wanted=wanted,
        suggestions=suggestions,
        project=wanted,
    )


def resolve_project(project: str, *, client: Any = None) -> str:
    """The id of a project given by name (case and blanks ignored) or UUID.

    Raises
    ------
    ProjectNotFoundError
        No project matches; the error suggests close names.
    AmbiguousNameError
        Several projects match the name.
    """
    return str(_find_project(resolve_client(client), project)["id"])


# -- samples ----------------------------------------------------------------------------------
class SampleResolver:
    """Resolve many sample names or UUIDs with one listing of the samples.

    Parameters
    ----------
    client : Client, SDK client or None
        Where to look; ``None`` builds the default client from the environment.
    project : str, optional
        A project's name or UUID: names are looked up among its samples, and samples
        created here are added to it.
    create : bool, default False
        Create a sample for a name that matches none (race-safe).

    Notes
    -----
    The samples are listed once, at the first name to resolve; samples created by others
    afterwards are found when this resolver creates the same name (the server's 409 names
    them). Safe to share between threads.

    Examples
    --------
    >>> from atomscale_accessors.server import LocalServer
    >>> from atomscale_accessors import Client, SampleResolver
    >>> with LocalServer() as srv:
    ...     client = Client(api_key=srv.api_key, endpoint=srv.endpoint)
    ...     w7 = srv.create_sample("W0421-07")
    ...     ids = SampleResolver(client, create=True).resolve_many(["w0421-07 ", "W0421-08"])
    ...     ids["w0421-07 "] == w7, len(srv.store.list_samples())
    (True, 2)
    """

    def __init__(
        self, client: Any = None, *, project: str | None = None, create: bool = False
    ) -> None:
        self.client = resolve_client(client)
        self.create = bool(create)
        self._project_given = None if project is None else _checked(project, "project")
        self._project: Mapping[str, Any] | None = None
        self._by_key: dict[str, list[Mapping[str, Any]]] | None = None
        self._ids: set[str] = set()
        self._lock = threading.RLock()
        #: Ids of the samples this resolver created (not those another caller made first).
        self.created: list[str] = []

    def __repr__(self) -> str:
        return (
            f"SampleResolver({self.client!r}, project={self._project_given!r}, "
            f"create={self.create})"
        )

    @property
    def project_id(self) -> str | None:
        """The project's id (looked up once), or ``None`` without a project."""
        if self._project_given is None:
            return None
        with self._lock:
            if self._project is None:
                self._project = _find_project(self.client, self._project_given)
            return str(self._project["id"])

    def resolve(self, sample: str) -> str:
        """The id of one sample given by name or UUID; see :func:`resolve_sample`."""
        wanted = _checked(sample, "sample")
        with self._lock:
            _ = self.project_id  # an unknown project is an error, whatever the sample
            if is_uuid(wanted):
                return self._existing_id(wanted)
            found = _one(self._listing().get(_key(wanted), []), wanted, "sample")
            if found is not None:
                return str(found["id"])
            if not self.create:
                raise self._not_found(wanted)
            return self._create(wanted)

    def resolve_many(self, samples: Iterable[str]) -> dict[str, str]:
        """Each distinct sample given (as given) mapped to its id, with one listing."""
        given = list(dict.fromkeys(samples))
        with self._lock:
            if len(given) > 1:
                self._listing()  # one listing instead of one request per UUID
            return {sample: self.resolve(sample) for sample in given}

    # -- steps --------------------------------------------------------------------------
    def _listing(self) -> dict[str, list[Mapping[str, Any]]]:
        if self._by_key is None:
            project_id = self.project_id
            if project_id is None:
                listed = self.client.list_samples()
            else:
                listed = self.client.list_project_samples(project_id)
            self._by_key = {}
            for item in listed:
                self._remember(item)
        return self._by_key

    def _remember(self, sample: Mapping[str, Any]) -> None:
        assert self._by_key is not None
        self._ids.add(str(sample["id"]).lower())
        entries = self._by_key.setdefault(_key(str(sample.get("name", ""))), [])
        if all(str(e["id"]) != str(sample["id"]) for e in entries):
            entries.append(sample)

    def _existing_id(self, sample_id: str) -> str:
        if sample_id in self._ids:
            return sample_id
        try:
            found = self.client.get_sample(sample_id)
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            raise SampleNotFoundError(
                f"no sample has the id {sample_id}", wanted=sample_id
            ) from None
        self._ids.add(str(found.get("id", sample_id)).lower())
        return sample_id

    def _not_found(self, name: str) -> SampleNotFoundError:
        names = [str(e["name"]) for entries in self._listing().values() for e in entries]
        suggestions = _close(name, names)
        where = "" if self._project_given is None else f" in project {_shown(self._project_given)}"
        return SampleNotFoundError(
            f"no sample named {_shown(name)}{where}{_suggestion_text(suggestions)} ({CREATE_HINT})",
            wanted=name,
            suggestions=suggestions,
            project=self._project_given,
        )

    def _create(self, name: str) -> str:
        """Create ``name``; when another caller was first, take its sample."""
        try:
            sample: Mapping[str, Any] = self.client.create_sample(name)
        except (ApiError, TransportError) as exc:
            sample = self._created_by_someone(name, exc)
        else:
            self.created.append(str(sample["id"]))
        self._remember(sample)
        project_id = self.project_id
        if project_id is not None:
            self.client.add_sample_to_project(project_id, str(sample["id"]))
        return str(sample["id"])

    def _created_by_someone(self, name: str, error: ApiError | TransportError) -> Mapping[str, Any]:
        """The sample named ``name`` after a failed create, or ``error`` raised again.

        A 409 names the winner of a race. Any other failure may still have created the
        sample (an answer lost on the way): the samples are listed again to find it.
        """
        detail = getattr(error, "detail", None)
        if isinstance(error, ApiError) and error.status_code == 409 and isinstance(detail, dict):
            taken = detail.get("physical_sample_id")
            if is_uuid(taken):
                return {"id": str(taken).lower(), "name": name}
        try:
            listed = self.client.list_samples()
        except (ApiError, TransportError):
            raise error from None
        found = _one(
            [s for s in listed if _key(str(s.get("name", ""))) == _key(name)], name, "sample"
        )
        if found is None:
            raise error
        return found


def resolve_sample(
    sample: str, *, create: bool = False, project: str | None = None, client: Any = None
) -> str:
    """The id of a sample given by name or UUID.

    Parameters
    ----------
    sample : str
        A UUID, which must exist, or a name: blanks around it and case are ignored, as
        the official SDK does.
    create : bool, default False
        Create a sample for a name that matches none. Safe when several callers create
        one new name at once: all of them get the one sample.
    project : str, optional
        A project's name or UUID: the name is looked up among the project's samples, and
        a sample created here is added to the project.
    client : Client, SDK client or None
        ``None`` builds the default client from the environment (``AS_API_KEY``,
        ``AS_API_ENDPOINT``).

    Returns
    -------
    str
        The sample's UUID.

    Raises
    ------
    SampleNotFoundError
        No sample has the UUID, or none the name (and ``create`` is false); the error
        suggests close names.
    ProjectNotFoundError
        ``project`` matches no project.
    AmbiguousNameError
        The name matches several samples (or projects): give the UUID.
    InvalidIdentifierError
        ``sample`` or ``project`` is not a string, or blank (nothing was sent).

    See Also
    --------
    SampleResolver : many names with one listing.

    Examples
    --------
    >>> from atomscale_accessors.server import LocalServer
    >>> from atomscale_accessors import Client, resolve_sample
    >>> with LocalServer() as srv:
    ...     client = Client(api_key=srv.api_key, endpoint=srv.endpoint)
    ...     sid = srv.create_sample("W0421-07")
    ...     resolve_sample(" w0421-07", client=client) == sid
    True
    """
    return SampleResolver(client, project=project, create=create).resolve(sample)


# -- listings as frames -----------------------------------------------------------------------
def samples(*, project: str | None = None, client: Any = None) -> pd.DataFrame:
    """The samples, one row per sample and project, sorted by name.

    A sample in several projects has a row for each (``project_id``, ``project_name``);
    one in none has one row with them missing. With ``project``, only that project's
    samples, each once. ``drop_duplicates("physical_sample_id")`` keeps one row per sample.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SAMPLE_COLUMNS`: ids, names and notes as strings, ``created`` and
        ``last_updated`` as UTC datetimes, ``num_data_items`` as ``Int64``.
    """
    api = resolve_client(client)
    if project is None:
        listed, only = api.list_samples(), None
    else:
        only = _find_project(api, project)
        listed = api.list_project_samples(str(only["id"]))
    rows = []
    for item in listed:
        memberships = item.get("projects") or [None]
        if only is not None:
            memberships = [{"id": only["id"], "name": only["name"]}]
        for member in memberships:
            rows.append(
                {
                    "physical_sample_id": item.get("id"),
                    "name": item.get("name"),
                    "project_id": None if member is None else member.get("id"),
                    "project_name": None if member is None else member.get("name"),
                    "created": item.get("created_datetime"),
                    "last_updated": item.get("last_updated"),
                    "owner_name": item.get("owner_name"),
                    "num_data_items": item.get("num_data_items"),
                    "notes": _note(item.get("detail_notes")),
                }
            )
    return _frame(rows, SAMPLE_COLUMNS, "GET /physical_samples/", ("name", "project_name"))


def samples_named(
    wanted: str | Iterable[str] | None, *, project: str | None = None, client: Any = None
) -> dict[str, str]:
    """The id and name of each sample wanted (names or UUIDs), or of every sample of a
    project when ``wanted`` is None, ordered by name (a listing of the samples, and one
    more to resolve names)."""
    api = resolve_client(client)
    listing = samples(project=project, client=api).drop_duplicates("physical_sample_id")
    names = dict(zip(listing["physical_sample_id"], listing["name"], strict=True))
    if wanted is None:
        ids = list(names)
    else:
        given = [wanted] if isinstance(wanted, str) else list(wanted)
        ids = list(dict.fromkeys(SampleResolver(api, project=project).resolve_many(given).values()))
    found = {sid: str(names.get(sid) or sid) for sid in ids}
    return dict(sorted(found.items(), key=lambda item: (_key(item[1]), item[0])))


def projects(client: Any = None) -> pd.DataFrame:
    """The projects, sorted by name.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PROJECT_COLUMNS`: ids, names and notes as strings,
        ``physical_sample_count`` as ``Int64``, ``last_updated`` as UTC datetimes.
    """
    rows = [
        {
            "project_id": item.get("id"),
            "name": item.get("name"),
            "physical_sample_count": item.get("physical_sample_count"),
            "owner_name": item.get("owner_name"),
            "notes": _note(item.get("detail_note")),
            "last_updated": item.get("last_updated"),
        }
        for item in resolve_client(client).list_projects()
    ]
    return _frame(rows, PROJECT_COLUMNS, "GET /projects/", ("name",))


def _note(note: Any) -> Any:
    """A note's text: the SDK reads notes as ``{content, last_updated}``."""
    return note.get("content") if isinstance(note, Mapping) else note


def _frame(
    rows: list[dict[str, Any]], columns: tuple[str, ...], route: str, order: tuple[str, ...]
) -> pd.DataFrame:
    index = pd.RangeIndex(len(rows))
    data = {}
    for column in columns:
        values = [row[column] for row in rows]
        if column in _TIMES:
            # the annotation frames' rule: ISO 8601, naive read as UTC
            data[column] = column_series("last_updated", values, index, route)
        elif column in _COUNTS:
            data[column] = pd.Series(values, index=index, dtype="Int64")
        else:
            data[column] = pd.Series(values, index=index, dtype=object).astype(_TEXT)
    frame = pd.DataFrame(data, columns=list(columns))
    return frame.sort_values(
        list(order), key=lambda s: s.str.lower(), kind="stable", na_position="first"
    ).reset_index(drop=True)
