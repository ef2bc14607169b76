"""The local server over real HTTP: answers, filters, errors, limits, persistence, concurrency.

Every test talks to a running server through ``requests``; nothing is mocked. The
``atomscale_server`` fixture comes from the package's pytest plugin.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import sqlite3
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import HAS_SERVER, NO_SERVER
from hypothesis import given, settings
from hypothesis import strategies as st

if not HAS_SERVER:
    pytest.skip(NO_SERVER, allow_module_level=True)

from atomscale_accessors.server import LocalServer
from atomscale_accessors.server.models import MAX_METADATA_BYTES, MAX_METADATA_DEPTH

FIELDS = [
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
]
SAMPLE_FIELDS = {
    "id",
    "name",
    "created_datetime",
    "last_updated",
    "version",
    "owner_id",
    "owner_name",
    "num_data_items",
    "growth_instrument",
    "target_material",
    "projects",
    "detail_notes",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

# The documented bulk example: two thickness values at (1.5, 2.0) and (3.0, 2.0) mm.
DOCUMENTED_EXAMPLE = [
    {
        "property_name": "thickness",
        "property_value": 101.3,
        "property_unit": "nm",
        "coord_ref_frame": "sample_relative",
        "coord_units": "mm",
        "coord_x": 1.5,
        "coord_y": 2.0,
    },
    {
        "property_name": "thickness",
        "property_value": 99.8,
        "property_unit": "nm",
        "coord_ref_frame": "sample_relative",
        "coord_units": "mm",
        "coord_x": 3.0,
        "coord_y": 2.0,
    },
]


# -- helpers --------------------------------------------------------------------------------


def _headers(srv: LocalServer, **extra: str) -> dict[str, str]:
    return {"X-API-KEY": srv.api_key, **extra}


def _url(srv: LocalServer, path: str) -> str:
    return srv.endpoint + path.lstrip("/")


def _annotations_path(sample_id: str) -> str:
    return f"physical_samples/{sample_id}/annotations"


def _bulk(srv: LocalServer, sample_id: str, annotations: list[dict[str, Any]]) -> requests.Response:
    return requests.post(
        _url(srv, f"{_annotations_path(sample_id)}/bulk"),
        json={"annotations": annotations},
        headers=_headers(srv),
        timeout=30,
    )


def _post_raw(srv: LocalServer, path: str, body: bytes) -> requests.Response:
    return requests.post(
        _url(srv, path),
        data=body,
        headers=_headers(srv, **{"Content-Type": "application/json"}),
        timeout=30,
    )


def _patch(
    srv: LocalServer, sample_id: str, annotation_id: str, body: dict[str, Any] | bytes
) -> requests.Response:
    url = _url(srv, f"{_annotations_path(sample_id)}/{annotation_id}")
    if isinstance(body, bytes):  # JSON that requests would refuse to write (NaN)
        headers = _headers(srv, **{"Content-Type": "application/json"})
        return requests.patch(url, data=body, headers=headers, timeout=30)
    return requests.patch(url, json=body, headers=_headers(srv), timeout=30)


def _list(srv: LocalServer, sample_id: str, **params: Any) -> requests.Response:
    return requests.get(
        _url(srv, f"{_annotations_path(sample_id)}/"),
        params=params,
        headers=_headers(srv),
        timeout=30,
    )


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _assert_422(answer: requests.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, list)
    assert detail
    for error in detail:
        assert {"type", "loc", "msg", "input"} <= set(error)
        assert isinstance(error["loc"], list)
    return detail


# -- answers --------------------------------------------------------------------------------


def test_documented_bulk_example_answers_every_field_in_order(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")

    answer = _bulk(srv, sample_id, DOCUMENTED_EXAMPLE)

    assert answer.status_code == 200
    created = answer.json()
    assert isinstance(created, list)
    assert len(created) == 2
    for sent, obj in zip(DOCUMENTED_EXAMPLE, created, strict=True):
        assert list(obj) == FIELDS
        assert uuid.UUID(obj["id"])
        assert obj["physical_sample_id"] == sample_id
        for key, value in sent.items():
            assert obj[key] == value
        assert obj["char_source_type"] is None
        assert obj["coord_z"] is None
        assert obj["data_id"] is None
        assert obj["annotation_metadata"] is None
        assert TIMESTAMP.match(obj["last_updated"])
        assert obj["version"] == "1"
    assert len({obj["id"] for obj in created}) == 2
    assert srv.stored_annotations(sample_id) == created


def test_create_one_annotation_with_every_field(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    data_id = "A1B2C3D4-5678-90AB-CDEF-1234567890AB"  # any spelling of a UUID
    body = {
        "property_name": "sheet_resistance",
        "property_value": 42,
        "property_unit": "ohm/sq",
        "char_source_type": "four_point_probe",
        "coord_ref_frame": "stage_absolute",
        "coord_units": "mm",
        "coord_x": -1.25,
        "coord_y": 0.5,
        "coord_z": 0.0,
        "data_id": data_id,
        "metadata": {"operator": "kim", "repeat": [1, 2.5, None], "ok": True},
    }

    answer = requests.post(
        _url(srv, f"{_annotations_path(sample_id)}/"), json=body, headers=_headers(srv), timeout=30
    )

    assert answer.status_code == 200
    obj = answer.json()
    assert list(obj) == FIELDS
    assert obj["property_value"] == 42.0
    assert obj["coord_ref_frame"] == "stage_absolute"
    assert obj["data_id"] == data_id.lower()
    assert obj["annotation_metadata"] == body["metadata"]
    assert "metadata" not in obj
    assert srv.stored_annotations(sample_id) == [obj]
    assert _list(srv, sample_id).json() == [obj]


def test_coord_ref_frame_defaults_to_sample_relative(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    answer = _bulk(
        srv,
        sample_id,
        [
            {"property_name": "t", "property_value": 1.0},
            {"property_name": "t", "property_value": 2.0, "coord_ref_frame": None},
        ],
    )
    assert answer.status_code == 200
    assert [obj["coord_ref_frame"] for obj in answer.json()] == ["sample_relative"] * 2


TRICKY_FLOATS = [
    0.1,
    0.1 + 0.2,
    1 / 3,
    math.pi,
    5e-324,
    -2.2250738585072014e-308,
    1.7976931348623157e308,
    -0.0,
    0.0,
    2.0**53 + 2,
    123456789.123456789,
]


def test_floats_survive_bit_for_bit(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    annotations = [
        {"property_name": "v", "property_value": v, "coord_x": v, "coord_y": -v, "coord_z": v}
        for v in TRICKY_FLOATS
    ]

    created = _bulk(srv, sample_id, annotations).json()
    listed = _list(srv, sample_id).json()

    for answer in (created, listed):
        for sent, obj in zip(TRICKY_FLOATS, answer, strict=True):
            assert _bits(obj["property_value"]) == _bits(sent)
            assert _bits(obj["coord_x"]) == _bits(sent)
            assert _bits(obj["coord_y"]) == _bits(-sent)
            assert _bits(obj["coord_z"]) == _bits(sent)


def test_negative_zero_survives_a_patch():
    with LocalServer() as srv:
        sample_id = srv.create_sample("wafer-1")
        (obj,) = _bulk(srv, sample_id, [{"property_name": "v", "property_value": -0.0}]).json()
        patched = _patch(srv, sample_id, obj["id"], {"property_value": 0.0, "coord_x": -0.0})
        assert _bits(patched.json()["property_value"]) == _bits(0.0)
        assert _bits(patched.json()["coord_x"]) == _bits(-0.0)
        (listed,) = _list(srv, sample_id).json()
        assert _bits(listed["property_value"]) == _bits(0.0)
        assert _bits(listed["coord_x"]) == _bits(-0.0)


def test_any_finite_float_round_trips_exactly():
    with LocalServer() as srv:
        sample_id = srv.create_sample("wafer-1")

        @settings(max_examples=25, deadline=None)
        @given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
        def check(values: list[float]) -> None:
            before = srv.annotation_count(sample_id)
            sent = [{"property_name": "v", "property_value": v, "coord_x": v} for v in values]
            created = _bulk(srv, sample_id, sent).json()
            stored = srv.stored_annotations(sample_id)[before:]
            for value, obj, row in zip(values, created, stored, strict=True):
                assert _bits(obj["property_value"]) == _bits(value)
                assert _bits(row["property_value"]) == _bits(value)
                assert _bits(row["coord_x"]) == _bits(value)

        check()


def test_a_bulk_insert_of_several_statements_keeps_order_signs_and_is_all_or_nothing():
    """The store writes a large bulk in several multi-row INSERTs within one transaction."""
    from atomscale_accessors.server.store import Store

    store = Store()
    try:
        sample_id = store.create_sample("wafer-1")["id"]
        per = store._rows_per_insert
        n = 2 * per + 345  # two full statements and a shorter one
        bodies = [
            {"property_name": "v", "property_value": float(i), "coord_x": -0.0 if i % 7 else 0.0}
            for i in range(n)
        ]
        created = store.create_annotations(sample_id, bodies)
        stored = store.stored_annotations(sample_id)
        assert [row["property_value"] for row in stored] == [float(i) for i in range(n)]
        assert [row["id"] for row in stored] == [obj["id"] for obj in created]
        assert len({obj["id"] for obj in created}) == n
        signs = [math.copysign(1.0, row["coord_x"]) for row in stored]
        assert signs == [-1.0 if i % 7 else 1.0 for i in range(n)]
        # A row the table refuses in the last statement: none of the bulk is stored.
        broken = [*bodies[: per + 1], {"property_name": None, "property_value": 1.0}]
        with pytest.raises(sqlite3.IntegrityError):
            store.create_annotations(sample_id, broken)
        assert store.annotation_count(sample_id) == n
    finally:
        store.close()


NASTY_TEXT = [
    "'); DROP TABLE annotations; --",
    "Robert'); DELETE FROM samples WHERE ('1'='1",
    'quote " and \\ backslash',
    "ünïcödé ✓ 🧪 Å",
    "nul\x00inside",
    "%_ like wildcards",
    "   ",
]


def test_strings_are_stored_literally(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample('it\'s "quoted"; DROP TABLE samples')
    annotations = [
        {
            "property_name": text,
            "property_value": float(i),
            "property_unit": text,
            "char_source_type": text,
            "coord_units": text,
            "metadata": {text: [text, {"nested": text}]},
        }
        for i, text in enumerate(NASTY_TEXT)
    ]

    created = _bulk(srv, sample_id, annotations).json()

    for text, obj in zip(NASTY_TEXT, created, strict=True):
        for key in ("property_name", "property_unit", "char_source_type", "coord_units"):
            assert obj[key] == text
        assert obj["annotation_metadata"] == {text: [text, {"nested": text}]}
    assert _list(srv, sample_id).json() == created
    # filters are parameters too: a fragment matches only itself, a wildcard nothing else
    for i, text in enumerate(NASTY_TEXT):
        found = _list(srv, sample_id, property_name=text).json()
        assert [obj["property_value"] for obj in found] == [float(i)]
    samples = requests.get(_url(srv, "physical_samples/"), headers=_headers(srv), timeout=30)
    assert samples.json()[0]["name"] == 'it\'s "quoted"; DROP TABLE samples'


# -- samples --------------------------------------------------------------------------------


def test_samples_create_list_filter_and_409(atomscale_server):
    srv = atomscale_server
    url = _url(srv, "physical_samples/")

    first = requests.post(url, json={"name": "wafer-1"}, headers=_headers(srv), timeout=30)
    second = requests.post(url, json={"name": "wafer-2"}, headers=_headers(srv), timeout=30)
    duplicate = requests.post(url, json={"name": "wafer-1"}, headers=_headers(srv), timeout=30)

    assert first.status_code == 200
    sample = first.json()
    assert set(sample) == SAMPLE_FIELDS
    assert sample["name"] == "wafer-1"
    assert sample["version"] == "1"
    assert TIMESTAMP.match(sample["created_datetime"])
    assert duplicate.status_code == 409
    detail = duplicate.json()["detail"]
    assert detail["physical_sample_id"] == sample["id"]
    assert isinstance(detail["message"], str)

    listed = requests.get(url, headers=_headers(srv), timeout=30).json()
    assert [s["name"] for s in listed] == ["wafer-1", "wafer-2"]
    assert listed[0] == sample
    only = requests.get(
        url, params={"physical_sample_id": second.json()["id"]}, headers=_headers(srv), timeout=30
    ).json()
    assert [s["name"] for s in only] == ["wafer-2"]
    none = requests.get(
        url, params={"physical_sample_id": str(uuid.uuid4())}, headers=_headers(srv), timeout=30
    )
    assert none.status_code == 200
    assert none.json() == []
    bad = requests.get(
        url, params={"physical_sample_id": "not-a-uuid"}, headers=_headers(srv), timeout=30
    )
    _assert_422(bad)
    assert srv.create_sample("wafer-3") in {
        s["id"] for s in requests.get(url, headers=_headers(srv), timeout=30).json()
    }


def test_sample_name_is_required(atomscale_server):
    srv = atomscale_server
    for body in (b"{}", b'{"name": ""}', b'{"name": 5}'):
        detail = _assert_422(_post_raw(srv, "physical_samples/", body))
        assert detail[0]["loc"] == ["body", "name"]


# -- listing and filters --------------------------------------------------------------------


@pytest.fixture
def filter_sample(atomscale_server) -> tuple[LocalServer, str, list[dict[str, Any]]]:
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    rows = [
        ("thickness", "ellipsometry", 0.0, 0.0),
        ("thickness", "xrd", 1.0, 1.0),
        ("sheet_resistance", "ellipsometry", 2.0, 2.0),
        ("thickness", "ellipsometry", None, None),
        ("thickness", None, 3.0, -1.0),
    ]
    created = _bulk(
        srv,
        sample_id,
        [
            {
                "property_name": name,
                "property_value": float(i),
                "char_source_type": source,
                "coord_x": x,
                "coord_y": y,
            }
            for i, (name, source, x, y) in enumerate(rows)
        ],
    ).json()
    return srv, sample_id, created


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [0, 1, 2, 3, 4]),
        ({"property_name": "thickness"}, [0, 1, 3, 4]),
        ({"property_name": "nothing"}, []),
        ({"char_source_type": "ellipsometry"}, [0, 2, 3]),
        ({"property_name": "thickness", "char_source_type": "ellipsometry"}, [0, 3]),
        # bounds inclusive at both ends; a row without the coordinate is left out
        ({"x_min": 0, "x_max": 1}, [0, 1]),
        ({"x_min": 1.0, "x_max": 3.0}, [1, 2, 4]),
        ({"y_min": -1, "y_max": 1}, [0, 1, 4]),
        ({"x_min": 0, "x_max": 2, "y_min": 1, "y_max": 2}, [1, 2]),
        ({"x_min": 2, "x_max": 1}, []),
        # one bound alone does not filter that axis
        ({"x_min": 1.5}, [0, 1, 2, 3, 4]),
        ({"x_max": 0.5}, [0, 1, 2, 3, 4]),
        ({"y_min": 0, "x_max": 0}, [0, 1, 2, 3, 4]),
        ({"y_min": 0, "y_max": 0, "x_min": 100}, [0]),
        ({"property_name": "thickness", "x_min": 0, "x_max": 3}, [0, 1, 4]),
    ],
)
def test_list_filters(filter_sample, params, expected):
    srv, sample_id, created = filter_sample
    answer = _list(srv, sample_id, **params)
    assert answer.status_code == 200
    assert answer.json() == [created[i] for i in expected]


def test_list_of_sample_without_annotations_is_empty(atomscale_server):
    srv = atomscale_server
    answer = _list(srv, srv.create_sample("empty"))
    assert answer.status_code == 200
    assert answer.json() == []


def test_both_slash_forms_answer_without_redirect(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    (obj,) = _bulk(srv, sample_id, [{"property_name": "t", "property_value": 1.0}]).json()
    base = _annotations_path(sample_id)
    one = {"property_name": "t", "property_value": 2.0}
    calls = [
        ("GET", "physical_samples", None),
        ("POST", "physical_samples", {"name": "wafer-2"}),
        ("GET", base, None),
        ("POST", base, one),
        ("POST", f"{base}/bulk", {"annotations": [one]}),
        ("PATCH", f"{base}/{obj['id']}", {"property_value": 3.0}),
    ]
    for method, path, body in calls:
        for form in (path, f"{path}/"):
            if method == "POST" and body and "name" in body:
                body = {"name": f"sample {form}"}
            answer = requests.request(
                method,
                _url(srv, form),
                json=body,
                headers=_headers(srv),
                allow_redirects=False,
                timeout=30,
            )
            assert answer.status_code == 200, (method, form, answer.status_code, answer.text)
    assert srv.annotation_count(sample_id) == 5


# -- errors ---------------------------------------------------------------------------------


def test_401_for_missing_or_wrong_key_on_every_route(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    base = _annotations_path(sample_id)
    calls = [
        ("GET", "physical_samples/"),
        ("POST", "physical_samples/"),
        ("GET", f"{base}/"),
        ("POST", f"{base}/"),
        ("POST", f"{base}/bulk"),
        ("PATCH", f"{base}/{uuid.uuid4()}"),
        ("GET", "no/such/route"),
    ]
    body = {"annotations": [{"property_name": "t", "property_value": 1.0}]}
    for method, path in calls:
        for headers in ({}, {"X-API-KEY": "wrong"}, {"X-API-KEY": srv.api_key + "x"}):
            answer = requests.request(
                method, _url(srv, path), json=body, headers=headers, timeout=30
            )
            assert answer.status_code == 401, (method, path, headers)
            assert isinstance(answer.json()["detail"], str)
    assert srv.annotation_count(sample_id) == 0
    samples = requests.get(_url(srv, "physical_samples/"), headers=_headers(srv), timeout=30)
    assert len(samples.json()) == 1


def test_404_for_unknown_sample_on_every_annotation_route(atomscale_server):
    srv = atomscale_server
    unknown = str(uuid.uuid4())
    base = _annotations_path(unknown)
    one = {"property_name": "t", "property_value": 1.0}
    answers = [
        requests.get(_url(srv, f"{base}/"), headers=_headers(srv), timeout=30),
        requests.post(_url(srv, f"{base}/"), json=one, headers=_headers(srv), timeout=30),
        _bulk(srv, unknown, [one]),
        _patch(srv, unknown, str(uuid.uuid4()), {"property_value": 2.0}),
    ]
    for answer in answers:
        assert answer.status_code == 404
        assert isinstance(answer.json()["detail"], str)
    assert srv.annotation_count() == 0


def test_404_for_unknown_annotation(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    other_id = srv.create_sample("wafer-2")
    (obj,) = _bulk(srv, sample_id, [{"property_name": "t", "property_value": 1.0}]).json()

    unknown = _patch(srv, sample_id, str(uuid.uuid4()), {"property_value": 2.0})
    wrong_sample = _patch(srv, other_id, obj["id"], {"property_value": 2.0})

    for answer in (unknown, wrong_sample):
        assert answer.status_code == 404
        assert isinstance(answer.json()["detail"], str)
    assert srv.stored_annotations(sample_id) == [obj]


BAD_ANNOTATIONS = [
    ('{"property_value": 1.0}', "missing", ["property_name"]),
    ('{"property_name": "t"}', "missing", ["property_value"]),
    ('{"property_name": "t", "property_value": "1.5"}', "float_type", ["property_value"]),
    ('{"property_name": "t", "property_value": true}', "float_type", ["property_value"]),
    ('{"property_name": "t", "property_value": null}', "float_type", ["property_value"]),
    ('{"property_name": "t", "property_value": NaN}', "finite_number", ["property_value"]),
    ('{"property_name": "t", "property_value": Infinity}', "finite_number", ["property_value"]),
    ('{"property_name": "t", "property_value": -Infinity}', "finite_number", ["property_value"]),
    ('{"property_name": "t", "property_value": 1e999}', "finite_number", ["property_value"]),
    ('{"property_name": "t", "property_value": 1, "coord_x": NaN}', "finite_number", ["coord_x"]),
    ('{"property_name": "t", "property_value": 1, "coord_y": "2"}', "float_type", ["coord_y"]),
    (
        '{"property_name": "t", "property_value": 1, "coord_ref_frame": "wafer"}',
        "literal_error",
        ["coord_ref_frame"],
    ),
    (
        '{"property_name": "t", "property_value": 1, "data_id": "12345"}',
        "uuid_parsing",
        ["data_id"],
    ),
    ('{"property_name": "", "property_value": 1}', "string_too_short", ["property_name"]),
    ('{"property_name": 5, "property_value": 1}', "string_type", ["property_name"]),
    ('{"property_name": "t", "property_value": 1, "zzz": 1}', "extra_forbidden", ["zzz"]),
    (
        '{"property_name": "t", "property_value": 1, "annotation_metadata": {}}',
        "extra_forbidden",
        ["annotation_metadata"],
    ),
    ('{"property_name": "t", "property_value": 1, "metadata": [1]}', "dict_type", ["metadata"]),
    (
        '{"property_name": "t", "property_value": 1, "metadata": {"a": NaN}}',
        "value_error",
        ["metadata"],
    ),
]


@pytest.mark.parametrize(("annotation", "error_type", "loc"), BAD_ANNOTATIONS)
def test_422_for_each_invalid_annotation(atomscale_server, annotation, error_type, loc):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    good = '{"property_name": "t", "property_value": 1.0}'

    bulk = _post_raw(
        srv,
        f"{_annotations_path(sample_id)}/bulk",
        f'{{"annotations": [{good}, {annotation}]}}'.encode(),
    )
    single = _post_raw(srv, f"{_annotations_path(sample_id)}/", annotation.encode())

    detail = _assert_422(bulk)
    assert any(
        e["type"] == error_type and e["loc"] == ["body", "annotations", 1, *loc] for e in detail
    ), detail
    detail = _assert_422(single)
    assert any(e["type"] == error_type and e["loc"] == ["body", *loc] for e in detail), detail
    assert srv.annotation_count(sample_id) == 0  # all or nothing


@pytest.mark.parametrize(
    ("body", "error_type", "loc"),
    [
        (b"", "json_invalid", ["body"]),
        (b"{not json", "json_invalid", ["body"]),
        (b'{"annotations": {"property_name": "t"}}', "list_type", ["body", "annotations"]),
        (b"[]", "dict_type", ["body"]),
        (b"{}", "missing", ["body", "annotations"]),
    ],
)
def test_422_for_malformed_bulk_bodies(atomscale_server, body, error_type, loc):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    detail = _assert_422(_post_raw(srv, f"{_annotations_path(sample_id)}/bulk", body))
    assert detail[0]["type"] == error_type
    assert detail[0]["loc"] == loc


def test_422_for_malformed_path_ids(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    one = {"property_name": "t", "property_value": 1.0}
    answers = {
        "physical_sample_id": [
            _bulk(srv, "not-a-uuid", [one]),
            _list(srv, "1234"),
            requests.post(
                _url(srv, "physical_samples/xyz/annotations/"),
                json=one,
                headers=_headers(srv),
                timeout=30,
            ),
        ],
        "annotation_id": [_patch(srv, sample_id, "not-a-uuid", {"property_value": 1.0})],
    }
    for name, group in answers.items():
        for answer in group:
            detail = _assert_422(answer)
            assert detail[0]["loc"] == ["path", name]
            assert detail[0]["type"] == "uuid_parsing"


# -- metadata limits ------------------------------------------------------------------------


def _nested_text(levels: int, inner: str = "dict") -> str:
    """Metadata JSON ``levels`` deep: an object holding objects, or arrays, down to a 1."""
    opening, closing = ('{"a":', "}") if inner == "dict" else ("[", "]")
    return '{"a":' + opening * (levels - 1) + "1" + closing * (levels - 1) + "}"


def _with_metadata(metadata: str, value: float = 1.0) -> str:
    return f'{{"property_name": "t", "property_value": {value}, "metadata": {metadata}}}'


def test_metadata_limits_are_the_documented_ones():
    # The client checks the same numbers before it sends anything.
    assert (MAX_METADATA_DEPTH, MAX_METADATA_BYTES) == (32, 64 * 1024)


@pytest.mark.parametrize("inner", ["dict", "list"])
@pytest.mark.parametrize("levels", [33, 197, 250])  # 198 and deeper: past the parser's limit
def test_metadata_nested_too_deep_is_refused_naming_the_annotation(atomscale_server, inner, levels):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    path = f"{_annotations_path(sample_id)}/bulk"
    deepest_allowed = _with_metadata(_nested_text(32, inner))
    too_deep = _with_metadata(_nested_text(levels, inner), value=2.0)
    good = _with_metadata("{}")

    refused = _post_raw(
        srv, path, f'{{"annotations": [{good}, {deepest_allowed}, {too_deep}]}}'.encode()
    )
    accepted = _post_raw(srv, path, f'{{"annotations": [{good}, {deepest_allowed}]}}'.encode())

    detail = _assert_422(refused)
    assert detail == [
        {
            "type": "metadata_too_deep",
            "loc": ["body", "annotations", 2, "metadata"],
            "msg": f"Metadata is nested {levels} levels deep, more than the limit of 32",
            "input": None,
            "ctx": {"depth": levels, "max_depth": 32},
        }
    ]
    assert accepted.status_code == 200, accepted.text
    assert srv.annotation_count(sample_id) == 2  # nothing of the refused request


def test_metadata_depth_is_checked_on_create_and_update(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    single = _post_raw(
        srv, f"{_annotations_path(sample_id)}/", _with_metadata(_nested_text(33)).encode()
    )
    (stored,) = srv.store.create_annotations(
        sample_id, [{"property_name": "t", "property_value": 1.0}]
    )
    patched = _patch(srv, sample_id, stored["id"], f'{{"metadata": {_nested_text(40)}}}'.encode())

    for answer, depth in ((single, 33), (patched, 40)):
        (error,) = _assert_422(answer)
        assert (error["type"], error["loc"]) == ("metadata_too_deep", ["body", "metadata"])
        assert error["ctx"] == {"depth": depth, "max_depth": 32}
    assert [a["annotation_metadata"] for a in srv.stored_annotations(sample_id)] == [None]


def test_metadata_nested_past_what_any_decoder_reads_is_still_a_422(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    body = f'{{"annotations": [{_with_metadata(_nested_text(5000))}]}}'.encode()
    detail = _assert_422(_post_raw(srv, f"{_annotations_path(sample_id)}/bulk", body))
    assert detail[0]["type"] == "json_invalid"
    assert srv.annotation_count(sample_id) == 0


# Each character's share of the measured size: compact JSON with all but printable ASCII
# escaped, whatever the request's own spelling (DEL and é as \u007f and \u00e9, an emoji
# as two escapes). DEL is 1 byte in UTF-8 but 6 measured: the widest growth there is.
WIDTHS = {"x": 1, "\x7f": 6, "é": 6, "\U0001f600": 12}


@pytest.mark.parametrize("escaped", [False, True], ids=["raw UTF-8", "escaped"])
@pytest.mark.parametrize("char", list(WIDTHS))
def test_metadata_size_limit_is_exact(atomscale_server, char, escaped):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    fits = (64 * 1024 - len('{"s":""}')) // WIDTHS[char]  # characters that fill the limit

    def post(n: int, value: float) -> requests.Response:
        annotation = {"property_name": "t", "property_value": value, "metadata": {"s": char * n}}
        body = json.dumps({"annotations": [annotation]}, ensure_ascii=escaped, indent=2)
        return _post_raw(srv, f"{_annotations_path(sample_id)}/bulk", body.encode())

    over = post(fits + 1, 1.0)
    at_limit = post(fits, 2.0)

    (error,) = _assert_422(over)
    size = len('{"s":""}') + (fits + 1) * WIDTHS[char]
    assert (error["type"], error["loc"]) == (
        "metadata_too_large",
        ["body", "annotations", 0, "metadata"],
    )
    assert error["ctx"] == {"size": size, "max_bytes": 65536}
    assert at_limit.status_code == 200, at_limit.text
    assert srv.annotation_count(sample_id) == 1


# -- size limits ----------------------------------------------------------------------------


def test_413_by_annotation_count(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    srv.set_limits(max_bulk_annotations=3)
    one = {"property_name": "t", "property_value": 1.0}

    over = _bulk(srv, sample_id, [one] * 4)
    at_limit = _bulk(srv, sample_id, [one] * 3)

    assert over.status_code == 413
    assert "3" in over.json()["detail"]
    assert at_limit.status_code == 200
    assert srv.annotation_count(sample_id) == 3


def test_count_limit_is_exact_despite_the_cheap_count(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    srv.set_limits(max_bulk_annotations=2)
    # "property_name" also as a metadata key and a value: the byte count overcounts
    decoy = {"property_name": "t", "property_value": 1.0, "metadata": {"property_name": 1}}
    assert _bulk(srv, sample_id, [decoy, {**decoy, "property_unit": "property_name"}]).ok
    # an escaped key is not seen by the byte count; the exact count still refuses it
    escaped = '{"\\u0070roperty_name": "t", "property_value": 1}'
    body = f'{{"annotations": [{escaped}, {escaped}, {escaped}]}}'.encode()
    assert _post_raw(srv, f"{_annotations_path(sample_id)}/bulk", body).status_code == 413
    assert srv.annotation_count(sample_id) == 2


def test_413_by_bytes_with_content_length(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    srv.set_limits(max_body_bytes=1000)
    many = [{"property_name": "thickness", "property_value": float(i)} for i in range(40)]

    over = _bulk(srv, sample_id, many)
    under = _bulk(srv, sample_id, many[:5])

    assert over.status_code == 413
    assert isinstance(over.json()["detail"], str)
    assert under.status_code == 200
    assert srv.annotation_count(sample_id) == 5


def _read_http_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 answer with a Content-Length from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the answer's headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the answer's body"
        body += chunk
    return status, headers, body


def test_413_is_decided_from_content_length_before_the_body_is_sent(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    head = (
        f"POST /physical_samples/{sample_id}/annotations/bulk HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{srv.port}\r\n"
        f"X-API-KEY: {srv.api_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {10**12}\r\n"
        "\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(head.encode())  # and not one byte of the terabyte announced
        status, _, body = _read_http_answer(sock)
    assert status == 413
    assert "bytes" in json.loads(body)["detail"]
    assert srv.request_count("bulk_create") == 1


def test_client_leaving_mid_body_is_one_log_line_not_a_traceback(atomscale_server, caplog):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    head = (
        f"POST /physical_samples/{sample_id}/annotations/bulk HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{srv.port}\r\n"
        f"X-API-KEY: {srv.api_key}\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 1000\r\n"
        "\r\n"
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"annotati')  # 10 of the 1000 bytes announced
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # anything else the server logs about it comes at once

    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "client disconnected while sending the body of POST"
        f" /physical_samples/{sample_id}/annotations/bulk"
    )
    assert record.exc_info is None
    assert "Traceback" not in caplog.text
    assert srv.annotation_count(sample_id) == 0
    assert _list(srv, sample_id).status_code == 200  # the server carries on


def test_413_for_a_chunked_body_over_the_limit(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    srv.set_limits(max_body_bytes=4096)
    payload = json.dumps(
        {"annotations": [{"property_name": "t", "property_value": float(i)} for i in range(500)]}
    ).encode()

    def chunks():  # a generator body is sent chunked, without Content-Length
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    answer = requests.post(
        _url(srv, f"{_annotations_path(sample_id)}/bulk"),
        data=chunks(),
        headers=_headers(srv, **{"Content-Type": "application/json"}),
        timeout=30,
    )
    assert answer.status_code == 413
    assert srv.annotation_count(sample_id) == 0
    srv.set_limits(max_body_bytes=None)
    again = requests.post(
        _url(srv, f"{_annotations_path(sample_id)}/bulk"),
        data=chunks(),
        headers=_headers(srv, **{"Content-Type": "application/json"}),
        timeout=30,
    )
    assert again.status_code == 200
    assert srv.annotation_count(sample_id) == 500


# -- updates --------------------------------------------------------------------------------


def test_patch_updates_only_the_given_fields_and_bumps_version(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    original = {
        "property_name": "thickness",
        "property_value": 10.0,
        "property_unit": "nm",
        "char_source_type": "ellipsometry",
        "coord_units": "mm",
        "coord_x": 1.0,
        "coord_y": 2.0,
        "data_id": str(uuid.uuid4()),
        "metadata": {"a": 1},
    }
    (obj,) = _bulk(srv, sample_id, [original]).json()

    first = _patch(srv, sample_id, obj["id"], {"property_value": 11.5, "metadata": {"b": [2]}})
    second = _patch(
        srv, sample_id, obj["id"], {"property_unit": None, "coord_ref_frame": "stage_absolute"}
    )

    assert first.status_code == 200
    updated = first.json()
    assert list(updated) == FIELDS
    assert updated["version"] == "2"
    assert updated["property_value"] == 11.5
    assert updated["annotation_metadata"] == {"b": [2]}
    assert updated["last_updated"] >= obj["last_updated"]
    unchanged = set(FIELDS) - {"property_value", "annotation_metadata", "version", "last_updated"}
    assert {k: updated[k] for k in unchanged} == {k: obj[k] for k in unchanged}
    final = second.json()
    assert final["version"] == "3"
    assert final["property_unit"] is None
    assert final["coord_ref_frame"] == "stage_absolute"
    assert final["property_value"] == 11.5
    assert srv.stored_annotations(sample_id) == [final]


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"char_source_type": "xrd"}, "extra_forbidden"),
        ({"data_id": str(uuid.uuid4())}, "extra_forbidden"),
        ({"annotation_metadata": {}}, "extra_forbidden"),
        ({"id": str(uuid.uuid4())}, "extra_forbidden"),
        ({"property_value": "2.0"}, "float_type"),
        ({"property_value": None}, "float_type"),
        ({"property_name": None}, "string_type"),
        ({"property_name": ""}, "string_too_short"),
        ({"coord_ref_frame": None}, "literal_error"),
        (b'{"coord_x": NaN}', "finite_number"),
    ],
)
def test_patch_refuses_fields_it_must_not_change(atomscale_server, body, error_type):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    (obj,) = _bulk(
        srv, sample_id, [{"property_name": "t", "property_value": 1.0, "char_source_type": "xps"}]
    ).json()

    detail = _assert_422(_patch(srv, sample_id, obj["id"], body))

    assert detail[0]["type"] == error_type
    field = next(iter(json.loads(body) if isinstance(body, bytes) else body))
    assert detail[0]["loc"] == ["body", field]
    assert srv.stored_annotations(sample_id) == [obj]


# -- persistence, restarts, concurrency -----------------------------------------------------


def test_data_persists_in_a_file_across_servers(tmp_path: Path):
    db = tmp_path / "annotations.sqlite"
    with LocalServer(db_path=db) as first:
        sample_id = first.create_sample("wafer-1")
        created = _bulk(first, sample_id, DOCUMENTED_EXAMPLE).json()
        patched = _patch(first, sample_id, created[0]["id"], {"property_value": 7.0}).json()
    with LocalServer(db_path=db) as second:
        assert second.api_key != first.api_key
        listed = _list(second, sample_id)
        samples = requests.get(
            _url(second, "physical_samples"), headers=_headers(second), timeout=30
        )
    assert listed.json() == [patched, created[1]]
    assert [s["id"] for s in samples.json()] == [sample_id]


def test_stop_and_start_keep_port_and_in_memory_data(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    created = _bulk(srv, sample_id, DOCUMENTED_EXAMPLE).json()
    endpoint = srv.endpoint

    srv.stop()
    assert not srv.running
    with pytest.raises(requests.exceptions.ConnectionError):
        _list(srv, sample_id)
    srv.start()

    assert srv.endpoint == endpoint
    assert _list(srv, sample_id).json() == created


def test_no_thread_is_left_behind():
    before = {t.ident for t in threading.enumerate()}
    with LocalServer() as srv:
        sample_id = srv.create_sample("wafer-1")
        assert _bulk(srv, sample_id, DOCUMENTED_EXAMPLE).ok  # uses a worker thread too
        srv.stop()
        srv.start()
        assert srv.running
    assert not srv.running
    assert [t.name for t in threading.enumerate() if t.ident not in before] == []
    srv.close()


def test_concurrent_bulk_requests_store_everything_exactly_once(atomscale_server):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    n_threads, per_request = 8, 500
    barrier = threading.Barrier(n_threads)
    answers: dict[int, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []

    def post(t: int) -> None:
        batch = [
            {"property_name": "t", "property_value": t * 1000.0 + j, "coord_x": float(j)}
            for j in range(per_request)
        ]
        try:
            barrier.wait(10)
            answer = _bulk(srv, sample_id, batch)
            assert answer.status_code == 200
            answers[t] = answer.json()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    assert srv.annotation_count(sample_id) == n_threads * per_request
    for t, objs in answers.items():  # each answer in its request's order
        assert [o["property_value"] for o in objs] == [t * 1000.0 + j for j in range(per_request)]
    stored = srv.stored_annotations(sample_id)
    assert len({row["id"] for row in stored}) == n_threads * per_request
    assert {row["id"] for row in stored} == {o["id"] for objs in answers.values() for o in objs}
    assert sorted(row["property_value"] for row in stored) == sorted(
        t * 1000.0 + j for t in range(n_threads) for j in range(per_request)
    )


# -- the Python API -------------------------------------------------------------------------


def test_key_is_generated_required_and_never_shown(caplog):
    caplog.set_level(logging.DEBUG)
    with LocalServer(access_log=True) as srv:
        sample_id = srv.create_sample("wafer-1")
        _bulk(srv, sample_id, DOCUMENTED_EXAMPLE)
        requests.get(_url(srv, "physical_samples/"), headers={"X-API-KEY": "wrong"}, timeout=30)
        text = repr(srv)
    assert len(srv.api_key) >= 32
    assert srv.api_key not in text
    assert srv.api_key not in caplog.text
    assert LocalServer(api_key="given").api_key == "given"


def test_endpoint_is_loopback_with_trailing_slash(atomscale_server):
    srv = atomscale_server
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", srv.endpoint)
    assert srv.port == int(srv.endpoint.rsplit(":", 1)[1].rstrip("/"))
    with pytest.raises(RuntimeError):
        _ = LocalServer().endpoint  # no port before the first start
