"""The official ``atomscale`` SDK against the local server: its sample and project reads,
and its name resolution, which :func:`atomscale_accessors.resolve_sample` must agree with.

Skipped where the SDK is not installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings

import pytest

atomscale = pytest.importorskip("atomscale")
from atomscale.core.client import ClientError  # noqa: E402

from atomscale_accessors import resolve_sample  # noqa: E402


@pytest.fixture
def sdk(atomscale_server):
    return atomscale.Client(
        api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, mute_bars=True
    )


def test_get_physical_sample_without_warnings(atomscale_server, sdk):
    sample_id = atomscale_server.create_sample("W0421-07")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed metrics read is only a warning in the SDK
        result = sdk.get_physical_sample(sample_id)
    assert result.physical_sample_id == sample_id
    assert result.physical_sample_name == "W0421-07"
    assert result.sample_metrics is not None and result.sample_metrics.empty
    assert result.data_results == []


def test_timeseries_and_process_steps(atomscale_server, sdk):
    sample_id = atomscale_server.create_sample("W-1")
    series = sdk.get_physical_sample_timeseries(sample_id)
    steps = sdk.get_process_steps(sample_id)
    assert series.empty and "property_name" in series.columns
    assert steps.empty and "step_index" in steps.columns
    for read in (sdk.get_physical_sample_timeseries, sdk.get_process_steps):
        with pytest.raises(ClientError) as missing:
            read(str(uuid.uuid4()))
        assert missing.value.status_code == 404


def test_projects_and_their_samples(atomscale_server, sdk):
    srv = atomscale_server
    lot = srv.create_project("Lot A")
    srv.create_project("Lot B")
    sample_id = srv.create_sample("W-1")
    sdk._add_sample_to_project(lot, sample_id)

    projects = sdk.list_projects()
    assert list(projects["Project Name"]) == ["Lot A", "Lot B"]
    assert list(projects["Physical Sample Count"]) == [1, 0]
    assert sdk._resolve_project(" lot a ") == (lot, "Lot A")
    samples = sdk.list_physical_samples()
    assert samples.loc[0, "Project ID"] == lot
    assert samples.loc[0, "Project Name"] == "Lot A"
    (member,) = sdk.get_project(lot).samples
    assert member.physical_sample_id == sample_id


def test_resolve_by_name_uuid_and_creating(atomscale_server, sdk):
    srv = atomscale_server
    sample_id = srv.create_sample("W0421-07")
    assert sdk._resolve_physical_sample("  w0421-07 ") == (sample_id, "W0421-07")
    assert sdk._resolve_physical_sample(sample_id) == (sample_id, "W0421-07")
    with pytest.raises(ClientError, match="not found"):
        sdk._resolve_physical_sample(str(uuid.uuid4()))
    created_id, name = sdk._resolve_physical_sample("W0421-08")
    assert name == "W0421-08"
    assert [s["id"] for s in srv.store.list_samples() if s["name"] == "W0421-08"] == [created_id]
    # both libraries mean the same sample by a name (and the SDK's client serves both)
    assert resolve_sample(" W0421-08", client=sdk) == created_id


def test_sdk_takes_the_winner_of_a_creation_race(atomscale_server, sdk):
    """The SDK lists, finds nothing, and posts; another caller creates the name meanwhile:
    the server's 409 carries the winner's id, which the SDK takes."""
    srv = atomscale_server
    srv.inject("latency", route="create_sample", seconds=1.0)
    found: list[tuple[str, str]] = []
    thread = threading.Thread(target=lambda: found.append(sdk._resolve_physical_sample("W-9")))
    thread.start()
    deadline = time.monotonic() + 30
    while srv.request_count("create_sample") == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    winner = srv.create_sample("W-9")  # while the SDK's POST waits
    thread.join(30)
    assert found == [(winner, "W-9")]
    assert len(srv.store.list_samples()) == 1
