"""The local server's sample and project routes, and its API page, over real HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests
from conftest import HAS_SERVER, NO_SERVER

if not HAS_SERVER:
    pytest.skip(NO_SERVER, allow_module_level=True)

from atomscale_accessors.server import LocalServer


def _get(srv: LocalServer, path: str, **kwargs) -> requests.Response:
    return requests.get(
        f"{srv.endpoint}{path}", headers={"X-API-KEY": srv.api_key}, timeout=30, **kwargs
    )


def _post(srv: LocalServer, path: str, body: object) -> requests.Response:
    return requests.post(
        f"{srv.endpoint}{path}", json=body, headers={"X-API-KEY": srv.api_key}, timeout=30
    )


def _track(srv: LocalServer, project_id: str, sample_id: str) -> requests.Response:
    body = {"physical_sample_id": sample_id, "set_active": True}
    return _post(srv, f"projects/{project_id}/configuration/tracking_samples", body)


def test_one_sample_with_its_projects_and_notes(atomscale_server):
    srv = atomscale_server
    made = _post(srv, "physical_samples/", {"name": "W-1", "detail_notes": "polished"}).json()
    lot = srv.create_project("Lot A")
    other = srv.create_project("Lot B")
    assert _track(srv, lot, made["id"]).status_code == 200
    assert _track(srv, other, made["id"]).status_code == 200

    answer = _get(srv, f"physical_samples/{made['id']}")
    assert answer.status_code == 200
    sample = answer.json()
    assert sample["name"] == "W-1"
    assert sample["projects"] == [{"id": lot, "name": "Lot A"}, {"id": other, "name": "Lot B"}]
    assert sample["detail_notes"] == {
        "content": "polished",
        "last_updated": made["created_datetime"],
    }
    # the list answers the same object
    (listed,) = _get(srv, "physical_samples/").json()
    assert listed == sample
    bare = _get(srv, f"physical_samples/{srv.create_sample('W-2')}").json()
    assert bare["projects"] == [] and bare["detail_notes"] is None


def test_unknown_or_malformed_sample_id(atomscale_server):
    srv = atomscale_server
    for path in ("", "/timeseries/", "/process_steps"):
        missing = _get(srv, f"physical_samples/{uuid.uuid4()}{path}")
        assert missing.status_code == 404, path
        assert missing.json()["detail"] == "Physical sample not found"
    assert _get(srv, "physical_samples/not-a-uuid").status_code == 422


def test_timeseries_and_process_steps_are_empty_for_a_sample(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("W-1")
    for path, field in (("timeseries/", "properties"), ("process_steps", "process_steps")):
        answer = _get(srv, f"physical_samples/{sample_id}/{path}")
        assert answer.status_code == 200
        assert answer.json() == {"physical_sample_id": sample_id, field: []}


def test_projects_list_membership_and_counts(atomscale_server):
    srv = atomscale_server
    assert _get(srv, "projects/").json() == []
    lot = srv.create_project("Lot A")
    empty = srv.create_project("Lot B")
    first, second = srv.create_sample("W-1"), srv.create_sample("W-2")
    before = _get(srv, "projects/").json()[0]["last_updated"]

    added = _track(srv, lot, second)
    again = _track(srv, lot, second)  # adding twice changes nothing
    _track(srv, lot, first)

    assert added.status_code == again.status_code == 200
    assert added.json()["physical_sample_count"] == again.json()["physical_sample_count"] == 1
    projects = _get(srv, "projects/").json()
    assert [(p["name"], p["physical_sample_count"]) for p in projects] == [
        ("Lot A", 2),
        ("Lot B", 0),
    ]
    assert projects[0]["last_updated"] > before
    assert {"id", "name", "owner_name", "detail_note", "last_updated"} <= set(projects[0])
    members = _get(srv, f"projects/{lot}/physical_samples").json()
    assert [s["name"] for s in members] == ["W-1", "W-2"]  # in the samples' creation order
    assert _get(srv, f"projects/{empty}/physical_samples").json() == []


def test_project_errors(atomscale_server):
    srv = atomscale_server
    lot = srv.create_project("Lot A")
    sample_id = srv.create_sample("W-1")
    unknown_project = _track(srv, str(uuid.uuid4()), sample_id)
    assert unknown_project.status_code == 404
    assert unknown_project.json()["detail"] == "Project not found"
    unknown_sample = _track(srv, lot, str(uuid.uuid4()))
    assert unknown_sample.status_code == 404
    assert unknown_sample.json()["detail"] == "Physical sample not found"
    assert _get(srv, f"projects/{uuid.uuid4()}/physical_samples").status_code == 404
    tracking = f"projects/{lot}/configuration/tracking_samples"
    for body in (
        {},
        {"physical_sample_id": "W-1"},
        {"physical_sample_id": sample_id, "set_active": "yes"},
    ):
        assert _post(srv, tracking, body).status_code == 422, body
    assert _get(srv, "projects/").json()[0]["physical_sample_count"] == 0
    with pytest.raises(ValueError, match="Lot A"):
        srv.create_project("Lot A")


def test_new_routes_answer_both_slash_forms_and_need_the_key(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("W-1")
    lot = srv.create_project("Lot A")
    paths = [
        f"physical_samples/{sample_id}",
        f"physical_samples/{sample_id}/timeseries",
        f"physical_samples/{sample_id}/process_steps",
        "projects",
        f"projects/{lot}/physical_samples",
    ]
    for path in paths:
        for form in (path, f"{path}/"):
            answer = _get(srv, form, allow_redirects=False)
            assert answer.status_code == 200, form
            assert requests.get(f"{srv.endpoint}{form}", timeout=30).status_code == 401
    assert srv.request_count("get_sample") == 4
    assert srv.request_count("list_projects") == 4


def test_projects_persist_in_a_file(tmp_path: Path):
    db = tmp_path / "catalog.sqlite"
    with LocalServer(db) as first:
        lot = first.create_project("Lot A")
        sample_id = first.create_sample("W-1")
        assert _track(first, lot, sample_id).status_code == 200
    with LocalServer(db) as second:
        assert [s["id"] for s in _get(second, f"projects/{lot}/physical_samples").json()] == [
            sample_id
        ]


def test_api_page_is_open_and_describes_the_routes(atomscale_server):
    srv = atomscale_server
    page = requests.get(f"{srv.endpoint}docs", timeout=30)
    assert page.status_code == 200
    assert "swagger" in page.text.lower()
    schema = requests.get(f"{srv.endpoint}openapi.json", timeout=30).json()
    paths = schema["paths"]
    # each route once, in the form the contract writes
    assert "/physical_samples/" in paths and "/physical_samples" not in paths
    assert "/projects/{project_id}/configuration/tracking_samples" in paths
    assert "/physical_samples/{physical_sample_id}/annotations/bulk" in paths
    bulk = paths["/physical_samples/{physical_sample_id}/annotations/bulk"]["post"]
    body = bulk["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["annotations"]["items"]["$ref"].startswith("#/components/schemas/")
    name = body["properties"]["annotations"]["items"]["$ref"].rsplit("/", 1)[1]
    assert "property_value" in schema["components"]["schemas"][name]["properties"]
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-KEY"
    assert srv.request_count() == 0  # the pages are not counted as API requests
    # the open pages are GET only, and nothing else is opened with them
    assert requests.post(f"{srv.endpoint}docs", timeout=30).status_code == 401
    assert requests.get(f"{srv.endpoint}docs/x", timeout=30).status_code == 401
