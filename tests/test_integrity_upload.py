"""The upload's promise under hostile conditions: answers that lie, two uploaders at once,
Ctrl+C, and answers the library cannot read. Over real sockets, through a fault proxy."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import msgspec
import pandas as pd
import pytest

import atomscale_accessors
from atomscale_accessors import Client, RetryPolicy
from atomscale_accessors.errors import AnnotationExistsError, ApiError, UploadError
from atomscale_accessors.locking import LOCK_DIRECTORY_VARIABLE
from atomscale_accessors.records import to_records
from tests.conftest import THICKNESS_MAPPING, thickness_frame
from tests.fault_proxy import FaultProxy

BULK = r"/annotations/bulk$"
LIST = r"/annotations/?$"
FAST = RetryPolicy(backoff=0.01, max_wait=0.5, settle=0.05)


@pytest.fixture
def proxy(atomscale_server):
    with FaultProxy(atomscale_server.endpoint) as proxy:
        yield proxy


@pytest.fixture
def proxied(atomscale_server, proxy) -> Client:
    return Client(api_key=atomscale_server.api_key, endpoint=proxy.endpoint, retry=FAST)


def _stored(server, sample_id: str) -> pd.DataFrame:
    frame = pd.DataFrame(server.stored_annotations(sample_id))
    return frame.sort_values(["coord_y", "coord_x"]).reset_index(drop=True)


def _rewrite_objects(change):
    """A rewrite of a JSON array answer, object by object."""

    def rewrite(body: bytes) -> bytes:
        objects = msgspec.json.decode(body)
        return msgspec.json.encode([change(i, obj) for i, obj in enumerate(objects)])

    return rewrite


def _assert_result_is_what_is_stored(created: pd.DataFrame, server, sample_id: str) -> None:
    stored = {obj["id"]: obj for obj in server.stored_annotations(sample_id)}
    assert created["annotation_id"].is_unique
    assert set(created["annotation_id"]) == set(stored)
    for row in created.itertuples():
        obj = stored[row.annotation_id]
        assert (obj["coord_x"], obj["coord_y"], obj["property_value"]) == (
            row.coord_x,
            row.coord_y,
            row.property_value,
        )


# -- 1. an answer that does not match what was sent is never success ------------------------
def test_a_replayed_answer_is_not_taken_for_the_next_chunk(
    atomscale_server, sample_id, proxy, proxied
):
    # The first bulk answer is remembered, the second request never reaches the server and
    # gets the first answer again: five records unstored, answered with taken ids.
    proxy.add("replay", method="POST", path=BULK, times=1)
    df = thickness_frame(10)
    created = df.atomscale.upload(
        sample_id, client=proxied, **THICKNESS_MAPPING, chunksize=5, max_workers=1
    )
    assert atomscale_server.annotation_count(sample_id) == 10
    _assert_result_is_what_is_stored(created, atomscale_server, sample_id)
    assert ("GET", f"/physical_samples/{sample_id}/annotations/") in proxy.requests[1:]


def _one_id_for_all():
    """Every object of the answer carries the first object's id."""
    first: dict[str, str] = {}

    def same_id(i, obj):
        first.setdefault("id", obj["id"])
        return {**obj, "id": first["id"]}

    return same_id


def _other_values(i, obj):
    """Other values, and ids the server never gave."""
    return {**obj, "property_value": obj["property_value"] + 1, "id": str(i).zfill(36)}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_one_id_for_all, id="one-id-repeated"),
        pytest.param(lambda: _other_values, id="other-values-other-ids"),
    ],
)
def test_an_answer_that_does_not_match_takes_what_is_stored(
    atomscale_server, sample_id, proxy, proxied, change
):
    # A 200 that does not describe what was sent: what is stored decides.
    proxy.add("rewrite", method="POST", path=BULK, fn=_rewrite_objects(change()))
    created = thickness_frame(8).atomscale.upload(
        sample_id, client=proxied, **THICKNESS_MAPPING, max_workers=1
    )
    assert atomscale_server.annotation_count(sample_id) == 8
    _assert_result_is_what_is_stored(created, atomscale_server, sample_id)


def test_records_stored_with_other_content_end_in_an_error(
    atomscale_server, sample_id, proxy, proxied
):
    # The server stores rounded values (the request is rewritten on its way) and answers
    # what it stored: those rows must not come back as created with the sent values.
    def rounded(body: bytes) -> bytes:
        sent = msgspec.json.decode(body)
        for item in sent["annotations"][:3]:
            item["property_value"] = round(item["property_value"])
        return msgspec.json.encode(sent)

    proxy.add("rewrite_request", method="POST", path=BULK, fn=rounded)
    df = thickness_frame(6)
    with pytest.raises(UploadError) as info:
        df.atomscale.upload(sample_id, client=proxied, **THICKNESS_MAPPING, max_workers=1)
    error = info.value
    assert len(error.created) == 3 and len(error.unknown) == 3
    assert list(error.unknown.index) == list(df.index[:3])
    assert list(error.mismatched.index) == list(df.index[:3])
    assert error.mismatched["property_value"].tolist() == [round(v) for v in df["thk"][:3]]
    assert atomscale_server.annotation_count(sample_id) == 6  # nothing sent twice
    # The re-run the error suggests completes without storing anything twice.
    again = df.atomscale.upload(
        sample_id, client=proxied, **THICKNESS_MAPPING, if_exists="skip", max_workers=1
    )
    assert len(again) == 0 and atomscale_server.annotation_count(sample_id) == 6


def test_a_200_that_stored_nothing_is_caught_by_verify(atomscale_server, sample_id, proxy):
    client = Client(api_key=atomscale_server.api_key, endpoint=proxy.endpoint, retry=FAST)
    df = thickness_frame(4)
    # What the server would have answered, answered without forwarding: nothing stored.
    records = to_records(df, **THICKNESS_MAPPING)
    fake = [
        {
            **{k: v for k, v in rec.items() if isinstance(v, str | float) and v == v},
            "id": f"00000000-0000-4000-8000-{i:012d}",
            "physical_sample_id": sample_id,
            "last_updated": "2026-01-01T00:00:00Z",
            "version": "1",
        }
        for i, rec in enumerate(records.to_dict("records"))
    ]
    proxy.add("answer", method="POST", path=BULK, body=json.dumps(fake))
    with pytest.raises(UploadError, match="not stored") as info:
        df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING, verify=True)
    assert len(info.value.unknown) == 4 and len(info.value.created) == 0
    assert atomscale_server.annotation_count(sample_id) == 0


# -- 2. two uploads of the same data at the same time ---------------------------------------
def test_two_threads_uploading_one_frame_store_it_once(atomscale_server, sample_id, client):
    # Slow listings, so both would list before either sends if nothing serialised them.
    atomscale_server.inject("latency", route="list_annotations", seconds=0.3, times=4)
    df = thickness_frame(20)
    outcomes: list[object] = []

    def upload() -> None:
        try:
            outcomes.append(df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING))
        except AnnotationExistsError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(type(o).__name__ for o in outcomes) == ["AnnotationExistsError", "DataFrame"]
    assert atomscale_server.annotation_count(sample_id) == 20


_UPLOADER = textwrap.dedent(
    """
    import json, sys
    import atomscale_accessors
    from atomscale_accessors import Client, RetryPolicy
    from atomscale_accessors.errors import AnnotationExistsError, UploadError
    from tests.conftest import THICKNESS_MAPPING, thickness_frame

    client = Client(api_key=sys.argv[1], endpoint=sys.argv[2], retry=RetryPolicy(backoff=0.01))
    try:
        created = thickness_frame(20).atomscale.upload(
            sys.argv[3], client=client, **THICKNESS_MAPPING, verify=sys.argv[4] == "verify"
        )
        print(json.dumps({"created": len(created)}))
    except AnnotationExistsError:
        print(json.dumps({"exists": True}))
    except UploadError as exc:
        print(json.dumps({"created": len(exc.created), "extra": len(exc.extra)}))
    """
)


def _two_processes(server, sample_id: str, lock_dirs: list[str], verify: bool) -> list[dict]:
    processes = []
    for lock_dir in lock_dirs:
        env = {**os.environ, LOCK_DIRECTORY_VARIABLE: lock_dir}
        argv = [server.api_key, server.endpoint, sample_id, "verify" if verify else "-"]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", _UPLOADER, *argv],
                env=env,
                cwd=os.path.dirname(os.path.dirname(__file__)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_uploading_one_frame_store_it_once(atomscale_server, sample_id, tmp_path):
    # Listings slow enough that both processes list before either sends, unless serialised.
    atomscale_server.set_latency(0.5)
    results = _two_processes(atomscale_server, sample_id, [str(tmp_path)] * 2, verify=False)
    assert sorted(map(str, results)) == ["{'created': 20}", "{'exists': True}"]
    assert atomscale_server.annotation_count(sample_id) == 20


def test_verify_names_what_an_upload_from_another_machine_doubled(atomscale_server, sample_id):
    # Two spellings of one endpoint take two locks: as two machines, which no lock can
    # serialise. Both bulk requests wait 1 s before the server reads them, so both uploads
    # have listed an empty sample before either stores anything.
    atomscale_server.inject("latency", route="bulk_create", seconds=1.0, times=2)
    port = atomscale_server.port
    df = thickness_frame(20)
    outcomes: dict[str, Any] = {}

    def upload(host: str) -> None:
        client = Client(api_key=atomscale_server.api_key, endpoint=f"http://{host}:{port}/")
        try:
            outcomes[host] = df.atomscale.upload(
                sample_id, client=client, **THICKNESS_MAPPING, verify=True
            )
        except UploadError as exc:
            outcomes[host] = exc

    threads = [threading.Thread(target=upload, args=(h,)) for h in ("127.0.0.1", "localhost")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert atomscale_server.annotation_count(sample_id) == 40  # the limit, stated in the docs
    errors = [o for o in outcomes.values() if isinstance(o, UploadError)]
    # The upload that checks last sees the other's 20 annotations at its positions.
    assert errors, outcomes
    error = errors[-1]
    assert len(error.created) == 20 and len(error.extra) == 20
    assert set(error.extra["annotation_id"]).isdisjoint(error.created["annotation_id"])
    assert "20 annotations at the positions of this upload's records were stored" in str(error)


# -- 5. Ctrl+C stops an upload promptly, with its account -----------------------------------
_INTERRUPTED = textwrap.dedent(
    """
    import json, signal, sys, time
    # Ctrl+C as in a terminal, even when this test runs where SIGINT is ignored (a job
    # started in the background by a shell, which its processes inherit).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import atomscale_accessors
    from atomscale_accessors import Client
    from tests.conftest import THICKNESS_MAPPING, thickness_frame

    client = Client(api_key=sys.argv[1], endpoint=sys.argv[2])
    print("ready", flush=True)
    try:
        thickness_frame(400).atomscale.upload(
            sys.argv[3], client=client, **THICKNESS_MAPPING, chunksize=20, max_workers=4
        )
    except KeyboardInterrupt as exc:
        error = exc.__cause__
        # The machine's monotonic clock, which the test reads too: when the call returned.
        print(json.dumps({
            "returned_at": time.monotonic(), "created": len(error.created),
            "not_created": len(error.not_created), "unknown": len(error.unknown),
        }), flush=True)
    """
)


def test_ctrl_c_stops_a_parallel_upload_within_a_second(atomscale_server, sample_id):
    # Every bulk request after the first four hangs for 20 s on the server.
    atomscale_server.inject("latency", route="bulk_create", seconds=20, after=4, times=100)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _INTERRUPTED,
            atomscale_server.api_key,
            atomscale_server.endpoint,
            sample_id,
        ],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    while atomscale_server.request_count("bulk_create") < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    out, err = process.communicate(timeout=30)
    account = json.loads(out.strip().splitlines()[-1])
    # The upload call ends within about a second (the interpreter's exit after it is not
    # the library's: it is only checked not to wait for the hanging requests).
    took = account.pop("returned_at") - interrupted
    assert took < 1.0, (took, err[-2000:])
    assert time.monotonic() - interrupted < 10
    assert account["created"] == 4 * 20
    assert account["unknown"] == 4 * 20  # the requests in flight
    assert sum(account.values()) == 400
    assert atomscale_server.annotation_count(sample_id) == 80


# -- 5. how long a failing server is tried ----------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_retries_end_after_give_up_after(atomscale_server, sample_id, proxy, method):
    # Every listing (or every bulk request) is refused with 503: the retries stop once
    # give_up_after has passed, long before max_attempts would end them.
    path = LIST if method == "GET" else BULK
    proxy.add("answer", method=method, path=path, status=503, body=b"busy", times=10_000)
    policy = RetryPolicy(max_attempts=10_000, backoff=0.05, max_wait=0.05, give_up_after=1.0)
    client = Client(api_key=atomscale_server.api_key, endpoint=proxy.endpoint, retry=policy)
    started = time.monotonic()
    with pytest.raises((ApiError, UploadError)) as info:
        thickness_frame(4).atomscale.upload(
            sample_id, client=client, **THICKNESS_MAPPING, if_exists="skip"
        )
    took = time.monotonic() - started
    tried = sum(1 for m, p in proxy.requests if m == method and re.search(path, p))
    assert 1.0 <= took < 5.0, took
    assert 5 <= tried <= 40, tried
    if method == "POST":
        assert len(info.value.not_created) == 4 and len(info.value.unknown) == 0
    else:
        assert info.value.status_code == 503
    assert atomscale_server.annotation_count(sample_id) == 0


# -- 7. answers the library cannot read -------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("property_value", "n/a"),
        ("coord_x", {}),
        ("last_updated", "yesterday"),
        ("version", {"v": 1}),
        ("id", 7),
    ],
)
def test_fetch_of_an_unreadable_listing_is_an_api_error(
    atomscale_server, sample_id, client, proxy, proxied, field, value
):
    thickness_frame(3).atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    proxy.add(
        "rewrite", method="GET", path=LIST, fn=_rewrite_objects(lambda i, o: {**o, field: value})
    )
    with pytest.raises(ApiError) as info:
        atomscale_accessors.fetch(sample_id, client=proxied)
    message = str(info.value)
    assert field in message and repr(value)[:10] in message
    assert f"/physical_samples/{sample_id}/annotations/" in message


def test_upload_refuses_an_unreadable_listing_before_sending(
    atomscale_server, sample_id, client, proxy, proxied
):
    df = thickness_frame(3)
    df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    proxy.add(
        "rewrite",
        method="GET",
        path=LIST,
        fn=_rewrite_objects(lambda i, o: {**o, "coord_y": "x" * 10**5}),
    )
    with pytest.raises(ApiError, match="coord_y") as info:
        df.atomscale.upload(sample_id, client=proxied, **THICKNESS_MAPPING, if_exists="skip")
    assert len(str(info.value)) < 1000
    assert not any(method == "POST" for method, _ in proxy.requests)


def test_an_unreadable_bulk_answer_leaves_its_records_unknown(
    atomscale_server, sample_id, proxy, proxied
):
    proxy.add(
        "rewrite", method="POST", path=BULK, fn=_rewrite_objects(lambda i, o: {**o, "coord_x": {}})
    )
    df = thickness_frame(6)
    with pytest.raises(UploadError) as info:
        df.atomscale.upload(sample_id, client=proxied, **THICKNESS_MAPPING, max_workers=1)
    assert len(info.value.unknown) == 6
    assert isinstance(info.value.cause, ApiError) and "coord_x" in str(info.value.cause)
    assert atomscale_server.annotation_count(sample_id) == 6  # never resent
