"""The local server's switchable faults and its request counters, over real HTTP."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
import requests
from conftest import HAS_SERVER, NO_SERVER
from urllib3.util.retry import Retry

if not HAS_SERVER:
    pytest.skip(NO_SERVER, allow_module_level=True)

from atomscale_accessors.server import FAULT_KINDS, ROUTE_NAMES, Faults, LocalServer
from atomscale_accessors.server.faults import LATENCY_KINDS

ONE = {"property_name": "thickness", "property_value": 1.0}


def _bulk(srv: LocalServer, sample_id: str, n: int = 3, **kwargs: Any) -> requests.Response:
    return requests.post(
        f"{srv.endpoint}physical_samples/{sample_id}/annotations/bulk",
        json={"annotations": [{**ONE, "property_value": float(i)} for i in range(n)]},
        headers={"X-API-KEY": srv.api_key},
        timeout=30,
        **kwargs,
    )


def _list(srv: LocalServer, sample_id: str) -> requests.Response:
    return requests.get(
        f"{srv.endpoint}physical_samples/{sample_id}/annotations/",
        headers={"X-API-KEY": srv.api_key},
        timeout=30,
    )


@pytest.fixture
def sample(atomscale_server) -> tuple[LocalServer, str]:
    return atomscale_server, atomscale_server.create_sample("wafer-1")


# -- failures around the commit -------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_error_before_commit_stores_nothing(sample, status):
    srv, sample_id = sample
    srv.inject("error_before_commit", status=status, route="bulk_create", times=1)

    failed = _bulk(srv, sample_id)
    retried = _bulk(srv, sample_id)

    assert failed.status_code == status
    assert isinstance(failed.json()["detail"], str)
    assert retried.status_code == 200
    assert srv.annotation_count(sample_id) == 3  # only the retry's


def test_error_after_commit_fires_on_the_request_after_the_skipped_ones(sample):
    srv, sample_id = sample
    srv.inject("error_after_commit", status=500, route="bulk", times=1, after=2)  # "bulk" alias

    statuses = [_bulk(srv, sample_id).status_code for _ in range(4)]

    assert statuses == [200, 200, 500, 200]
    # the failed request's annotations are there all the same
    assert srv.annotation_count(sample_id) == 12


def test_drop_after_commit_gives_a_connection_error_and_keeps_the_data(sample):
    srv, sample_id = sample
    srv.inject("drop_after_commit", route="bulk_create", times=1)

    with pytest.raises(requests.exceptions.ConnectionError):
        _bulk(srv, sample_id, n=5)

    assert srv.annotation_count(sample_id) == 5
    assert _bulk(srv, sample_id, n=5).status_code == 200  # the server is fine afterwards
    assert srv.annotation_count(sample_id) == 10


def test_drop_before_commit_gives_a_connection_error_and_stores_nothing(sample):
    srv, sample_id = sample
    srv.inject("drop_before_commit", route="bulk_create", times=1)

    with requests.Session() as session:
        session.headers["X-API-KEY"] = srv.api_key
        # a kept-alive connection first, so the drop hits a reused connection
        assert session.get(f"{srv.endpoint}physical_samples/", timeout=30).ok
        with pytest.raises(requests.exceptions.ConnectionError):
            session.post(
                f"{srv.endpoint}physical_samples/{sample_id}/annotations/bulk",
                json={"annotations": [ONE]},
                timeout=30,
            )
    assert srv.annotation_count(sample_id) == 0


def test_faults_on_other_routes(sample):
    srv, sample_id = sample
    srv.inject("error_after_commit", status=502, route="list_annotations")
    srv.inject("drop_before_commit", route="create_sample")

    assert _list(srv, sample_id).status_code == 502
    assert _bulk(srv, sample_id).status_code == 200  # not its route
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(
            f"{srv.endpoint}physical_samples/",
            json={"name": "wafer-2"},
            headers={"X-API-KEY": srv.api_key},
            timeout=30,
        )
    names = [s["name"] for s in srv.store.list_samples()]
    assert names == ["wafer-1"]
    assert _list(srv, sample_id).status_code == 200


def test_injected_faults_are_consumed_in_order(sample):
    srv, sample_id = sample
    srv.inject("error_before_commit", status=503, route="any", times=2)
    srv.inject("error_before_commit", status=500, route="bulk_create")

    statuses = [_bulk(srv, sample_id).status_code for _ in range(4)]

    assert statuses == [503, 503, 500, 200]
    assert srv.annotation_count(sample_id) == 3
    assert srv.faults.pending() == []


def test_clear_faults_removes_queued_ones(sample):
    srv, sample_id = sample
    srv.inject("error_before_commit", status=503, times=5)
    srv.set_latency(10.0)
    srv.clear_faults()
    assert _bulk(srv, sample_id).status_code == 200


# -- rate limits ----------------------------------------------------------------------------


def test_injected_429_with_and_without_retry_after(sample):
    srv, sample_id = sample
    srv.inject("rate_limited", route="bulk_create", times=2, retry_after=1)
    srv.inject("rate_limited", route="bulk_create", times=1, retry_after=None)

    answers = [_bulk(srv, sample_id) for _ in range(4)]

    assert [a.status_code for a in answers] == [429, 429, 429, 200]
    assert answers[0].headers["Retry-After"] == "1"
    assert answers[1].headers["Retry-After"] == "1"
    assert "Retry-After" not in answers[2].headers
    assert isinstance(answers[2].json()["detail"], str)
    assert srv.annotation_count(sample_id) == 3


@pytest.mark.parametrize(("seconds", "header"), [(2, "2"), (2.0, "2"), (0, "0")])
def test_whole_seconds_retry_after_is_an_integer(sample, seconds, header):
    srv, sample_id = sample
    srv.inject("rate_limited", retry_after=seconds)
    assert _bulk(srv, sample_id).headers["Retry-After"] == header


def test_rate_limit_answers_429_with_retry_after_beyond_the_rate(sample):
    srv, sample_id = sample
    srv.set_rate_limit(per_second=2)  # a burst of 2, then one every 0.5 s

    with requests.Session() as session:
        session.headers["X-API-KEY"] = srv.api_key
        url = f"{srv.endpoint}physical_samples/"
        answers = [session.get(url, timeout=30) for _ in range(6)]

    refused = [a for a in answers if a.status_code == 429]
    assert answers[0].status_code == 200
    assert len(refused) >= 3
    for answer in refused:
        assert answer.headers["Retry-After"] == "1"  # a wait of at most 0.5 s, rounded up
    srv.set_rate_limit(per_second=None)
    assert all(_list(srv, sample_id).status_code == 200 for _ in range(5))


def test_every_retry_after_sent_is_whole_seconds_that_urllib3_accepts(sample):
    # urllib3 (the official SDK's retries) raises InvalidHeader on a fraction.
    srv, sample_id = sample
    sent: dict[str, list[str]] = {}
    for seconds in (0, 1, 2.0, 30):
        srv.inject("rate_limited", route="list_annotations", retry_after=seconds)
        sent.setdefault(f"injected {seconds}", []).append(
            _list(srv, sample_id).headers["Retry-After"]
        )
    # The rate limit's own waits: a few hundredths of a second, under one, a few seconds.
    with requests.Session() as session:
        session.headers["X-API-KEY"] = srv.api_key
        for rate in (50, 2, 0.25):
            srv.set_rate_limit(per_second=rate, burst=1)
            answers = [
                session.get(f"{srv.endpoint}physical_samples/", timeout=30) for _ in range(3)
            ]
            sent[f"rate {rate}"] = [
                a.headers["Retry-After"] for a in answers if a.status_code == 429
            ]
            assert sent[f"rate {rate}"], f"rate {rate}: no 429"

    for values in sent.values():
        for value in values:
            assert re.fullmatch(r"[0-9]+", value), value
            assert Retry().parse_retry_after(value) == int(value)
    assert sent["injected 2.0"] == ["2"]
    # rounded up, never down: waits of 0.02 and 0.5 s are 1 s, one of 3.x s is 4 s
    assert set(sent["rate 50"]) == set(sent["rate 2"]) == {"1"}
    assert set(sent["rate 0.25"]) == {"4"}


def test_rate_limit_from_the_constructor():
    with LocalServer(rate_limit=1) as srv:
        url = f"{srv.endpoint}physical_samples/"
        statuses = [
            requests.get(url, headers={"X-API-KEY": srv.api_key}, timeout=30).status_code
            for _ in range(3)
        ]
    assert statuses[0] == 200
    assert 429 in statuses


# -- latency --------------------------------------------------------------------------------


def test_injected_latency_slows_one_request(sample):
    srv, sample_id = sample
    srv.inject("latency", seconds=0.5, route="bulk_create", times=1)

    start = time.perf_counter()
    slow = _bulk(srv, sample_id)
    elapsed = time.perf_counter() - start

    assert slow.status_code == 200
    assert elapsed >= 0.5
    assert srv.faults.pending() == []


def test_latency_does_not_hold_up_other_requests(sample):
    srv, sample_id = sample
    srv.inject("latency", seconds=4.0, route="bulk_create", times=1)
    slow_done = threading.Event()

    def slow() -> None:
        _bulk(srv, sample_id)
        slow_done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 10
    while srv.request_count("bulk_create") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the slow request has arrived
    fast = _list(srv, sample_id)
    answered_while_slow_pending = not slow_done.is_set()
    thread.join(30)

    assert fast.status_code == 200
    assert answered_while_slow_pending
    assert slow_done.is_set()


def test_global_latency_applies_to_every_request():
    with LocalServer(latency=0.5) as srv:
        start = time.perf_counter()
        answer = requests.get(
            f"{srv.endpoint}physical_samples/", headers={"X-API-KEY": srv.api_key}, timeout=30
        )
        assert answer.status_code == 200
        assert time.perf_counter() - start >= 0.5
        srv.set_latency(0)
        assert srv.faults.latency == 0


# -- counters -------------------------------------------------------------------------------


def test_counters_count_every_request_rejected_or_faulted(sample):
    srv, sample_id = sample
    assert srv.request_counts == dict.fromkeys(ROUTE_NAMES, 0)
    srv.inject("error_before_commit", status=503, route="bulk_create")

    _bulk(srv, sample_id)  # 503
    _bulk(srv, sample_id)  # 200
    requests.post(  # 401
        f"{srv.endpoint}physical_samples/{sample_id}/annotations/bulk", json={}, timeout=30
    )
    requests.post(  # 422
        f"{srv.endpoint}physical_samples/{sample_id}/annotations/",
        json={},
        headers={"X-API-KEY": srv.api_key},
        timeout=30,
    )
    _list(srv, sample_id)
    requests.get(f"{srv.endpoint}nowhere", headers={"X-API-KEY": srv.api_key}, timeout=30)

    counts = srv.request_counts
    assert counts["bulk_create"] == 3
    assert counts["create_annotation"] == 1
    assert counts["list_annotations"] == 1
    assert counts["other"] == 1
    assert srv.request_count("bulk_create") == 3
    assert srv.request_count() == 6
    srv.create_sample("direct")  # through the store: not a request
    assert srv.request_count() == 6
    srv.reset_counters()
    assert srv.request_count() == 0


# -- argument checking, no server needed ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("explode", {}),
        ("error_before_commit", {"route": "bulk_creation"}),
        ("error_before_commit", {"status": 200}),
        ("error_before_commit", {"times": 0}),
        ("error_before_commit", {"after": -1}),
        ("latency", {}),
        ("latency", {"seconds": -1}),
        ("drop_after_commit", {"status": 500}),
        ("rate_limited", {"retry_after": -1}),
        ("rate_limited", {"retry_after": 0.5}),  # Retry-After has whole seconds only
        ("rate_limited", {"retry_after": 1.25}),
        ("rate_limited", {"retry_after": float("inf")}),
        ("rate_limited", {"retry_after": True}),
        ("rate_limited", {"retry_after": "1"}),
        ("error_after_commit", {"retry_after": 1}),
        ("latency_before_commit", {}),
        ("latency_after_commit", {"seconds": -0.5}),
        ("error_after_commit", {"seconds": 1.0}),
    ],
)
def test_inject_refuses_bad_arguments(kind, options):
    with pytest.raises(ValueError):  # noqa: PT011 - any clear ValueError will do
        Faults().inject(kind, **options)


# -- every kind on every route, by its effect -----------------------------------------------

# Routes that store something; the others only read.
WRITES = (
    "create_sample",
    "create_annotation",
    "bulk_create",
    "update_annotation",
    "add_project_sample",
)
SLOWER = 0.6  # seconds of each latency kind
GIVE_UP = 0.2  # read timeout of a client that does not wait for them
# kind: (inject options, the answer's status or the exception, whether the write is stored)
EFFECTS: dict[str, tuple[dict[str, Any], int | type[Exception], bool]] = {
    "error_before_commit": ({"status": 503}, 503, False),
    "error_after_commit": ({"status": 502}, 502, True),
    "drop_before_commit": ({}, requests.exceptions.ConnectionError, False),
    "drop_after_commit": ({}, requests.exceptions.ConnectionError, True),
    "rate_limited": ({"retry_after": 1}, 429, False),
}


def _send(srv: LocalServer, route: str, ids: dict[str, str], timeout: Any) -> requests.Response:
    """One request to ``route``: each write leaves a mark that :func:`_stored` looks for."""
    base = f"{srv.endpoint}physical_samples/"
    annotations = f"{base}{ids['sample']}/annotations"
    project = f"{srv.endpoint}projects/{ids['project']}"
    method, url, body = {
        "get_sample": ("GET", f"{base}{ids['sample']}", None),
        "sample_timeseries": ("GET", f"{base}{ids['sample']}/timeseries/", None),
        "sample_process_steps": ("GET", f"{base}{ids['sample']}/process_steps", None),
        "list_projects": ("GET", f"{srv.endpoint}projects/", None),
        "project_samples": ("GET", f"{project}/physical_samples", None),
        "add_project_sample": ("POST", f"{project}/configuration/tracking_samples",
                               {"physical_sample_id": ids["sample"]}),
        "create_sample": ("POST", base, {"name": "made-by-the-request"}),
        "list_samples": ("GET", base, None),
        "list_annotations": ("GET", f"{annotations}/", None),
        "create_annotation": ("POST", f"{annotations}/", {**ONE, "property_value": 42.0}),
        "bulk_create": ("POST", f"{annotations}/bulk", {"annotations": [ONE, ONE]}),
        "update_annotation": ("PATCH", f"{annotations}/{ids['annotation']}", {"property_value": 2.0}),
    }[route]  # fmt: skip
    return requests.request(
        method, url, json=body, headers={"X-API-KEY": srv.api_key}, timeout=timeout
    )


def _stored(srv: LocalServer, route: str, ids: dict[str, str]) -> bool:
    """Whether the write :func:`_send` made to ``route`` is in the store."""
    if route == "create_sample":
        return "made-by-the-request" in {s["name"] for s in srv.store.list_samples()}
    if route == "add_project_sample":
        return bool(srv.store.project_samples(ids["project"]))
    (target,) = [a for a in srv.stored_annotations(ids["sample"]) if a["id"] == ids["annotation"]]
    if route == "update_annotation":
        return target["property_value"] == 2.0
    return srv.annotation_count(ids["sample"]) > 1


def _first_seen_stored(
    srv: LocalServer, route: str, ids: dict[str, str], since: float, wait: float
) -> float | None:
    """Seconds from ``since`` (a monotonic time) to when the write :func:`_send` made to
    ``route`` is first seen in the store, watched for ``wait`` seconds; None if never."""
    while (elapsed := time.monotonic() - since) < wait:
        if _stored(srv, route, ids):
            return elapsed
        time.sleep(0.01)
    return None


@pytest.mark.parametrize("route", ROUTE_NAMES)
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_kind_can_be_injected_on_every_route(atomscale_server, kind, route):
    srv = atomscale_server
    sample_id = srv.create_sample("wafer-1")
    (existing,) = srv.store.create_annotations(sample_id, [ONE])
    ids = {
        "sample": sample_id,
        "annotation": existing["id"],
        "project": srv.create_project("lot-1"),
    }

    if kind in LATENCY_KINDS:
        srv.inject(kind, route=route, seconds=SLOWER)
        if route in WRITES:
            # A client that gives up before the latency is over; when the write is first
            # seen in the store tells the kinds apart: before the latency could be over
            # (stored, then the answer waits), only after it (the write waits), or never.
            started = time.monotonic()
            with pytest.raises(requests.exceptions.ReadTimeout):
                _send(srv, route, ids, timeout=(5.0, GIVE_UP))
            # Past the latency for a write that never comes; long after, for a loaded machine.
            wait = 2 * SLOWER if kind == "latency" else SLOWER + 5.0
            seen = _first_seen_stored(srv, route, ids, since=started, wait=wait)
            if kind == "latency":
                assert seen is None  # read after the client left: never stored
            elif kind == "latency_before_commit":
                assert seen is not None and seen >= SLOWER  # stored after the wait
            else:
                assert seen is not None and seen < SLOWER  # stored, the answer late
        else:
            started = time.perf_counter()
            answer = _send(srv, route, ids, timeout=30)
            assert answer.status_code == 200
            assert time.perf_counter() - started >= SLOWER
    else:
        options, outcome, stores = EFFECTS[kind]
        srv.inject(kind, route=route, **options)
        if isinstance(outcome, int):
            answer = _send(srv, route, ids, timeout=30)
            assert answer.status_code == outcome
            assert isinstance(answer.json()["detail"], str)
            if kind == "rate_limited":
                assert answer.headers["Retry-After"] == "1"
        else:
            with pytest.raises(outcome):
                _send(srv, route, ids, timeout=30)
        if route in WRITES:
            assert _stored(srv, route, ids) is stores

    assert srv.request_count(route) == 1
    assert srv.faults.pending() == []  # spent on that one request


def test_decide_counts_down_after_and_times():
    faults = Faults()
    faults.inject("error_after_commit", route="bulk_create", times=2, after=1)
    faults.inject("latency", seconds=0.25, route="any", times=1)
    first = faults.decide("bulk_create")
    assert first.fault is None  # let through by after=1
    assert first.latency == 0.25
    assert faults.decide("list_samples").fault is None  # another route: untouched
    assert faults.decide("bulk_create").fault.kind == "error_after_commit"
    assert faults.decide("bulk_create").fault.kind == "error_after_commit"
    assert faults.decide("bulk_create") == type(first)()
