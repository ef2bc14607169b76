"""The transport's retries: GET and PATCH are repeated after failures that may pass, through
a real server and a real proxy; a bulk POST never is."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

import atomscale_accessors
from atomscale_accessors import Client, RetryPolicy
from atomscale_accessors.errors import ApiError, TransportError
from atomscale_accessors.retry import REPEATABLE_METHODS, stopping, transport_retry
from tests.fault_proxy import FaultProxy
from tests.test_client import THICKNESS as ANNOTATION

QUICK = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=2.0)
LIST = r"/annotations/$"
BULK = r"/annotations/bulk$"


@pytest.fixture
def quick(atomscale_server) -> Client:
    return Client(api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, retry=QUICK)


@pytest.fixture
def stored(atomscale_server, quick, sample_id) -> list[dict]:
    return quick.create_annotations(sample_id, [ANNOTATION, {**ANNOTATION, "coord_x": 3.0}])


@pytest.fixture
def proxy(atomscale_server):
    with FaultProxy(atomscale_server.endpoint) as proxy:
        yield proxy


def through(atomscale_server, proxy, policy: RetryPolicy = QUICK) -> Client:
    return Client(api_key=atomscale_server.api_key, endpoint=proxy.endpoint, retry=policy)


def sent(proxy, method: str, path: str) -> int:
    return sum(1 for m, p in proxy.requests if m == method and re.search(path, p))


# -- GET ------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_fetch_after_one_5xx_succeeds(atomscale_server, quick, sample_id, stored, status):
    atomscale_server.reset_counters()
    atomscale_server.inject("error_before_commit", route="list_annotations", status=status)
    frame = atomscale_accessors.fetch(sample_id, client=quick)
    assert sorted(frame["annotation_id"]) == sorted(a["id"] for a in stored)
    assert atomscale_server.request_count("list_annotations") == 2


def test_fetch_waits_what_retry_after_asks_for(atomscale_server, quick, sample_id, stored, caplog):
    caplog.set_level(logging.INFO, logger="atomscale_accessors")
    atomscale_server.reset_counters()
    atomscale_server.inject("rate_limited", route="list_annotations", retry_after=1)
    started = time.monotonic()
    frame = atomscale_accessors.fetch(sample_id, client=quick)
    took = time.monotonic() - started
    assert len(frame) == 2
    assert took >= 0.95, f"asked again after {took:.2f} s, the server asked for 1 s"
    assert atomscale_server.request_count("list_annotations") == 2
    waits = [r.args for r in caplog.records if r.msg.startswith("retrying in")]
    assert waits == [(1.0, "HTTP 429")]


def test_a_long_retry_after_is_capped_by_max_wait(atomscale_server, sample_id):
    policy = RetryPolicy(max_attempts=3, backoff=0.01, max_wait=0.2)
    client = Client(
        api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, retry=policy
    )
    atomscale_server.inject("rate_limited", route="list_annotations", retry_after=30)
    started = time.monotonic()
    assert len(atomscale_accessors.fetch(sample_id, client=client)) == 0
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("fault", ["cut_before", "cut_after"])
def test_fetch_after_a_cut_connection_succeeds(atomscale_server, sample_id, stored, proxy, fault):
    proxy.add(fault, method="GET", path=LIST)
    frame = atomscale_accessors.fetch(sample_id, client=through(atomscale_server, proxy))
    assert len(frame) == 2
    assert sent(proxy, "GET", LIST) == 2


def test_a_refused_connection_is_retried_until_the_server_is_up(atomscale_server, sample_id):
    # The server stops; it is back 0.3 s later, while the client is still retrying.
    policy = RetryPolicy(max_attempts=8, backoff=0.1, max_wait=0.5)
    client = Client(
        api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, retry=policy
    )
    atomscale_server.stop()
    timer = threading.Timer(0.3, atomscale_server.start)
    timer.start()
    try:
        assert len(atomscale_accessors.fetch(sample_id, client=client)) == 0
    finally:
        timer.join()


def test_retries_end_after_max_attempts_with_the_last_answer(atomscale_server, quick, sample_id):
    atomscale_server.reset_counters()
    atomscale_server.inject("error_before_commit", route="list_annotations", status=503, times=10)
    with pytest.raises(ApiError) as info:
        atomscale_accessors.fetch(sample_id, client=quick)
    assert info.value.status_code == 503
    assert atomscale_server.request_count("list_annotations") == QUICK.max_attempts


def test_a_failure_that_will_not_pass_is_not_retried(atomscale_server, quick):
    unknown = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
    atomscale_server.reset_counters()
    with pytest.raises(ApiError) as info:
        atomscale_accessors.fetch(unknown, client=quick)
    assert info.value.status_code == 404
    assert atomscale_server.request_count("list_annotations") == 1


def test_a_stopped_caller_makes_no_further_attempt(atomscale_server, quick, sample_id):
    stop = threading.Event()
    stop.set()
    atomscale_server.reset_counters()
    atomscale_server.inject("error_before_commit", route="list_annotations", status=503, times=10)
    with stopping(stop), pytest.raises(ApiError):
        quick.list_annotations(sample_id)
    assert atomscale_server.request_count("list_annotations") == 1


def test_retries_end_at_the_request_deadline(atomscale_server, sample_id):
    # Many attempts allowed, each refused at once: the deadline of the call ends them.
    policy = RetryPolicy(max_attempts=1000, backoff=0.2, max_wait=0.2)
    client = Client(
        api_key=atomscale_server.api_key,
        endpoint=atomscale_server.endpoint,
        retry=policy,
        deadline=1.0,
    )
    atomscale_server.inject("error_before_commit", route="list_annotations", status=503, times=1000)
    started = time.monotonic()
    with pytest.raises((ApiError, TransportError)):
        client.list_annotations(sample_id)
    assert time.monotonic() - started < 3.0


# -- PATCH ----------------------------------------------------------------------------------
def test_patch_after_one_503_succeeds(atomscale_server, quick, sample_id, stored):
    atomscale_server.reset_counters()
    atomscale_server.inject("error_before_commit", route="update_annotation", status=503)
    answer = quick.update_annotation(sample_id, stored[0]["id"], {"property_value": 7.0})
    assert answer["property_value"] == 7.0
    assert atomscale_server.request_count("update_annotation") == 2


def test_patch_after_a_cut_is_sent_again_with_its_body(atomscale_server, sample_id, stored, proxy):
    # Cut after the server applied it: the second PATCH sets the same value again.
    proxy.add("cut_after", method="PATCH")
    client = through(atomscale_server, proxy)
    answer = client.update_annotation(sample_id, stored[0]["id"], {"property_value": 9.5})
    assert answer["property_value"] == 9.5
    assert sent(proxy, "PATCH", "annotations/") == 2
    values = {a["id"]: a["property_value"] for a in atomscale_server.stored_annotations(sample_id)}
    assert values[stored[0]["id"]] == 9.5


# -- the bulk POST is never repeated by the transport ------------------------------------
@pytest.mark.parametrize("status", [429, 500, 503])
def test_the_bulk_post_is_not_repeated_after_an_error(atomscale_server, quick, sample_id, status):
    atomscale_server.inject(
        "rate_limited" if status == 429 else "error_before_commit",
        route="bulk_create",
        **({} if status == 429 else {"status": status}),
    )
    with pytest.raises(ApiError) as info:
        quick.create_annotations(sample_id, [ANNOTATION])
    assert info.value.status_code == status
    assert atomscale_server.request_count("bulk_create") == 1
    assert atomscale_server.annotation_count(sample_id) == 0


@pytest.mark.parametrize("fault", ["cut_before", "cut_after"])
def test_the_bulk_post_is_not_repeated_after_a_cut(atomscale_server, sample_id, proxy, fault):
    proxy.add(fault, method="POST", path=BULK)
    with pytest.raises(TransportError) as info:
        through(atomscale_server, proxy).create_annotations(sample_id, [ANNOTATION])
    assert info.value.sent is True
    assert sent(proxy, "POST", BULK) == 1
    assert atomscale_server.annotation_count(sample_id) == (1 if fault == "cut_after" else 0)


def test_a_post_to_a_refused_connection_is_tried_once(atomscale_server, sample_id, caplog):
    caplog.set_level(logging.DEBUG, logger="urllib3")
    client = Client(
        api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, retry=QUICK
    )
    atomscale_server.stop()
    try:
        with pytest.raises(TransportError) as info:
            client.create_annotations(sample_id, [ANNOTATION])
    finally:
        atomscale_server.start()
    assert info.value.sent is False
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_only_get_and_patch_are_repeatable():
    retry = transport_retry(RetryPolicy())
    assert {"GET", "PATCH"} == REPEATABLE_METHODS
    for method in ("POST", "PUT", "DELETE"):
        assert not retry.is_retry(method, 503)
    assert retry.is_retry("PATCH", 429) and retry.is_retry("GET", 500)


def test_jitter_spreads_backoff_waits_but_not_retry_after():
    policy = RetryPolicy(backoff=0.1, max_wait=10.0, jitter=0.5)
    waits = [policy.jittered_wait(2) for _ in range(200)]
    assert all(0.2 <= w <= 0.3 for w in waits)
    assert len(set(waits)) > 100
    assert {policy.jittered_wait(2, 1.0) for _ in range(20)} == {1.0}
    assert RetryPolicy(backoff=0.1, jitter=0.0).jittered_wait(2) == pytest.approx(0.2)
