"""Samples and projects by name, over real HTTP against the local server."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import uuid

import pandas as pd
import pytest

import atomscale_accessors as aa
from atomscale_accessors import Client, SampleResolver, resolve_sample
from atomscale_accessors.errors import (
    AmbiguousNameError,
    AtomscaleError,
    InvalidIdentifierError,
    ProjectNotFoundError,
    SampleNotFoundError,
)
from atomscale_accessors.samples import PROJECT_COLUMNS, SAMPLE_COLUMNS


def _names(server) -> list[str]:
    return [s["name"] for s in server.store.list_samples()]


def _members(server, project_id: str) -> list[str]:
    return [s["name"] for s in server.store.project_samples(project_id)]


# -- names ------------------------------------------------------------------------------------
def test_a_name_matches_ignoring_case_and_blanks(atomscale_server, client):
    sample_id = atomscale_server.create_sample("W0421-07")
    for given in ("W0421-07", "w0421-07", "  W0421-07\t", "\nw0421-07 "):
        assert resolve_sample(given, client=client) == sample_id
    assert resolve_sample(sample_id.upper(), client=client) == sample_id
    assert atomscale_server.request_count("create_sample") == 0


def test_an_unknown_uuid_is_an_error(atomscale_server, client):
    atomscale_server.create_sample("W0421-07")
    unknown = str(uuid.uuid4())
    with pytest.raises(SampleNotFoundError, match=unknown) as raised:
        resolve_sample(unknown, client=client, create=True)  # a UUID is never created
    assert isinstance(raised.value, LookupError | AtomscaleError)
    assert _names(atomscale_server) == ["W0421-07"]


def test_an_unknown_name_suggests_close_names_and_creates_nothing(atomscale_server, client):
    for name in ("W0421-07", "W0421-08", "Q-99"):
        atomscale_server.create_sample(name)
    with pytest.raises(SampleNotFoundError) as raised:
        resolve_sample("W0421-7", client=client)
    error = raised.value
    assert isinstance(error, LookupError)
    assert error.wanted == "W0421-7"
    assert error.suggestions[0] == "W0421-07"  # the closest first
    assert set(error.suggestions) == {"W0421-07", "W0421-08"}
    assert "Q-99" not in error.suggestions
    assert "did you mean 'W0421-0" in str(error) and "create=True" in str(error)
    assert atomscale_server.request_count("create_sample") == 0
    assert len(_names(atomscale_server)) == 3


def test_create_makes_the_stripped_name_once(atomscale_server, client):
    created = resolve_sample("  W0421-09 ", client=client, create=True)
    again = resolve_sample("w0421-09", client=client, create=True)
    assert created == again
    assert _names(atomscale_server) == ["W0421-09"]


def test_names_matching_several_samples_are_ambiguous(atomscale_server, client):
    first = atomscale_server.create_sample("W-1")
    second = atomscale_server.create_sample("w-1 ")
    with pytest.raises(AmbiguousNameError) as raised:
        resolve_sample("W-1", client=client, create=True)
    assert set(raised.value.matches) == {first, second}
    assert first in str(raised.value) and second in str(raised.value)
    assert len(_names(atomscale_server)) == 2
    for blanks in range(1, 11):
        atomscale_server.create_sample(" " * blanks + "W-1")
    with pytest.raises(AmbiguousNameError) as many:
        resolve_sample("W-1", client=client)
    assert len(many.value.matches) == 12
    assert str(many.value).endswith("and 2 more; give the UUID of the one you mean")


@pytest.mark.parametrize("bad", [None, 7, "", "   ", b"W-1"])
def test_bad_input_is_refused_before_anything_is_sent(atomscale_server, client, bad):
    with pytest.raises(InvalidIdentifierError):
        resolve_sample(bad, client=client, create=True)
    if bad is not None:  # no project is project=None
        with pytest.raises(InvalidIdentifierError):
            SampleResolver(client, project=bad)
    assert atomscale_server.request_count() == 0


def test_messages_are_capped_and_never_show_the_key(atomscale_server, client):
    atomscale_server.create_sample("x" * 5000)
    with pytest.raises(SampleNotFoundError) as raised:
        resolve_sample("x" * 4990 + atomscale_server.api_key, client=client)
    message = str(raised.value)
    assert len(message) < 1000
    assert atomscale_server.api_key not in message


def test_the_default_client_comes_from_the_environment(atomscale_server, env_client):
    sample_id = atomscale_server.create_sample("W-1")
    assert resolve_sample("w-1") == sample_id
    assert list(aa.samples()["physical_sample_id"]) == [sample_id]


# -- creation races ---------------------------------------------------------------------------
def test_two_creators_racing_get_one_sample(atomscale_server, client):
    # Both list (nothing there), then both create: the create requests are held long
    # enough for both to be under way, so the later one meets the server's 409.
    atomscale_server.inject("latency", route="create_sample", seconds=1.0, times=2)
    results: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            results.append(resolve_sample("W-new", client=client, create=True))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert atomscale_server.request_count("create_sample") == 2  # both tried
    (stored,) = atomscale_server.store.list_samples()
    assert results == [stored["id"], stored["id"]]


@pytest.mark.timeout(120)
def test_two_processes_racing_get_one_sample(atomscale_server):
    # Each process starts, lists the samples and creates the name; the creations are held
    # long enough (3 s) for the other process to list before the first one lands.
    atomscale_server.inject("latency", route="create_sample", seconds=3.0, times=2)
    env = {
        **os.environ,
        "AS_API_KEY": atomscale_server.api_key,
        "AS_API_ENDPOINT": atomscale_server.endpoint,
    }
    code = "import atomscale_accessors as a; print(a.resolve_sample('Lot-7 W01', create=True))"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    printed = [process.communicate(timeout=90)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    (stored,) = atomscale_server.store.list_samples()
    assert printed == [stored["id"], stored["id"]]
    assert atomscale_server.request_count("create_sample") == 2


def test_a_create_whose_answer_is_lost_finds_the_sample(atomscale_server, client):
    atomscale_server.inject("drop_after_commit", route="create_sample")
    created = resolve_sample("W-lost", client=client, create=True)
    (stored,) = atomscale_server.store.list_samples()
    assert created == stored["id"]
    assert atomscale_server.request_count("list_samples") == 2  # listed again to find it


# -- projects ---------------------------------------------------------------------------------
def test_names_are_looked_up_in_the_project(atomscale_server, client):
    srv = atomscale_server
    lot = srv.create_project("Lot A")
    inside, outside = srv.create_sample("W-1"), srv.create_sample("W-2")
    srv.store.add_sample_to_project(lot, inside)
    assert resolve_sample("w-1", project="lot a", client=client) == inside
    assert resolve_sample("W-1", project=lot, client=client) == inside
    with pytest.raises(SampleNotFoundError, match="in project 'lot a'") as raised:
        resolve_sample("W-2", project="lot a", client=client)
    assert raised.value.project == "lot a"
    # with create, the sample of that name elsewhere joins the project: no second W-2
    assert resolve_sample("W-2", project="Lot A", client=client, create=True) == outside
    assert _members(srv, lot) == ["W-1", "W-2"]
    assert _names(srv) == ["W-1", "W-2"]


def test_a_created_sample_joins_the_project(atomscale_server, client):
    srv = atomscale_server
    lot = srv.create_project("Lot A")
    srv.create_project("Lot B")
    created = resolve_sample("W-3", project="Lot A", client=client, create=True)
    assert _members(srv, lot) == ["W-3"]
    (stored,) = srv.store.list_samples()
    assert stored["id"] == created
    assert stored["projects"] == [{"id": lot, "name": "Lot A"}]


def test_an_unknown_project_is_an_error_with_close_names(atomscale_server, client):
    atomscale_server.create_project("Lot A")
    atomscale_server.create_project("Calibration")
    with pytest.raises(ProjectNotFoundError) as raised:
        resolve_sample("W-1", project="Lot B", client=client, create=True)
    assert raised.value.suggestions == ["Lot A"]
    assert "did you mean 'Lot A'" in str(raised.value)
    with pytest.raises(ProjectNotFoundError):
        aa.resolve_project(str(uuid.uuid4()), client=client)
    existing = atomscale_server.create_sample("W-2")
    with pytest.raises(ProjectNotFoundError):  # also for a sample given by its UUID
        resolve_sample(existing, project="Lot B", client=client)
    assert atomscale_server.request_count("create_sample") == 0


def test_ambiguous_project_names(atomscale_server, client):
    first = atomscale_server.create_project("Lot A")
    second = atomscale_server.create_project("LOT A")
    with pytest.raises(AmbiguousNameError) as raised:
        aa.resolve_project("lot a", client=client)
    assert set(raised.value.matches) == {first, second}
    assert aa.resolve_project(second, client=client) == second


# -- many names, one listing -------------------------------------------------------------------
def test_resolve_many_lists_once(atomscale_server, client):
    srv = atomscale_server
    existing = {f"W0421-{i:02d}": srv.create_sample(f"W0421-{i:02d}") for i in range(1, 13)}
    wanted = [f"w0421-{i:02d}" for i in range(1, 26)] + [existing["W0421-01"], "W0421-01 "]
    resolver = SampleResolver(client, create=True)
    found = resolver.resolve_many(wanted)
    assert srv.request_count("list_samples") == 1
    assert srv.request_count("create_sample") == 13
    assert srv.request_count("get_sample") == 0  # the UUID is in the listing
    assert found["w0421-01"] == found["W0421-01 "] == existing["W0421-01"]
    assert found[existing["W0421-01"]] == existing["W0421-01"]
    assert len(set(found.values())) == 25
    # the resolver remembers what it created: asking again sends nothing
    srv.reset_counters()
    assert resolver.resolve("W0421-25") == found["w0421-25"]
    assert srv.request_count() == 0


def test_resolve_many_in_a_project_lists_the_project_once(atomscale_server, client):
    srv = atomscale_server
    lot = srv.create_project("Lot A")
    resolver = SampleResolver(client, project="Lot A", create=True)
    found = resolver.resolve_many([f"W-{i}" for i in range(5)])
    assert srv.request_count("list_projects") == 1
    assert srv.request_count("project_samples") == 1
    assert srv.request_count("list_samples") == 0
    assert srv.request_count("add_project_sample") == 5
    assert sorted(_members(srv, lot)) == sorted(found)


# -- listings as frames -------------------------------------------------------------------------
def test_samples_frame_one_row_per_sample_and_project(atomscale_server, client):
    srv = atomscale_server
    lot_a, lot_b = srv.create_project("Lot A"), srv.create_project("Lot B")
    shared = srv.create_sample("b-shared")
    alone = srv.store.create_sample("A-alone", "polished")["id"]
    only_b = srv.create_sample("C-only-b")
    for project, sample in ((lot_a, shared), (lot_b, shared), (lot_b, only_b)):
        srv.store.add_sample_to_project(project, sample)

    frame = aa.samples(client=client)
    assert tuple(frame.columns) == SAMPLE_COLUMNS
    assert list(frame["name"]) == ["A-alone", "b-shared", "b-shared", "C-only-b"]
    assert list(frame["project_name"].fillna("-")) == ["-", "Lot A", "Lot B", "Lot B"]
    assert list(frame["physical_sample_id"]) == [alone, shared, shared, only_b]
    assert frame.loc[0, "notes"] == "polished"
    assert pd.isna(frame.loc[1, "notes"])
    assert isinstance(frame["name"].dtype, pd.StringDtype)
    assert isinstance(frame["project_id"].dtype, pd.StringDtype)
    assert str(frame["created"].dt.tz) == "UTC"
    assert str(frame["last_updated"].dt.tz) == "UTC"
    assert frame["num_data_items"].dtype == "Int64"

    in_b = aa.samples(project="lot b", client=client)
    assert list(in_b["name"]) == ["b-shared", "C-only-b"]
    assert set(in_b["project_id"]) == {lot_b}


def test_empty_listings_keep_columns_and_types(atomscale_server, client):
    frame = aa.samples(client=client)
    assert tuple(frame.columns) == SAMPLE_COLUMNS and len(frame) == 0
    assert str(frame["created"].dt.tz) == "UTC"
    assert isinstance(frame["name"].dtype, pd.StringDtype)
    assert tuple(aa.projects(client=client).columns) == PROJECT_COLUMNS


def test_projects_frame(atomscale_server, client):
    srv = atomscale_server
    lot = srv.create_project("lot b")
    srv.create_project("Lot A")
    srv.store.add_sample_to_project(lot, srv.create_sample("W-1"))
    frame = aa.projects(client=client)
    assert tuple(frame.columns) == PROJECT_COLUMNS
    assert list(frame["name"]) == ["Lot A", "lot b"]
    assert list(frame["physical_sample_count"]) == [0, 1]
    assert frame["physical_sample_count"].dtype == "Int64"
    assert str(frame["last_updated"].dt.tz) == "UTC"
    assert frame.loc[1, "project_id"] == lot


def test_an_sdk_like_client_object_is_accepted(atomscale_server):
    class Sdk:
        api_key = atomscale_server.api_key
        endpoint = atomscale_server.endpoint

    sample_id = atomscale_server.create_sample("W-1")
    assert resolve_sample("W-1", client=Sdk()) == sample_id
    assert isinstance(SampleResolver(Sdk()).client, Client)


def test_errors_pickle_with_their_data(atomscale_server, client):
    atomscale_server.create_sample("W0421-07")
    with pytest.raises(SampleNotFoundError) as raised:
        resolve_sample("W0421-7", project=None, client=client)
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (copy.wanted, copy.suggestions, str(copy)) == (
        "W0421-7",
        ["W0421-07"],
        str(raised.value),
    )
