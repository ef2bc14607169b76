"""The client: configuration, one method per route, errors, secrets (real local server)."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import uuid

import pytest

import atomscale_accessors
from atomscale_accessors import Client, RetryPolicy, fetch
from atomscale_accessors.client import resolve_client
from atomscale_accessors.errors import (
    ApiError,
    AtomscaleError,
    ConfigurationError,
    InvalidIdentifierError,
    TransportError,
)
from atomscale_accessors.schemas import ANNOTATION_COLUMNS

THICKNESS = {
    "property_name": "thickness",
    "property_value": 101.5,
    "property_unit": "nm",
    "coord_x": 1.5,
    "coord_y": 2.0,
    "coord_units": "mm",
    "coord_ref_frame": "sample_relative",
}
# A client that makes one attempt per request: for tests of how one failure is reported.
ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_key_and_endpoint_from_environment(monkeypatch):
    monkeypatch.setenv("ATOMSCALE_API_KEY", "second")
    assert Client().api_key == "second"
    monkeypatch.setenv("AS_API_KEY", "first")
    assert Client().api_key == "first"
    assert Client().endpoint == "https://api.atomscale.ai/"
    monkeypatch.setenv("AS_API_ENDPOINT", "https://example.org/api/v2")
    assert Client().endpoint == "https://example.org/api/v2/"
    assert Client(api_key="arg").api_key == "arg"


def test_missing_key_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="AS_API_KEY"):
        Client()


@pytest.mark.parametrize("endpoint", ["https://host/prefix", "https://host/prefix/"])
def test_endpoint_prefix_is_kept(endpoint):
    client = Client(api_key="k", endpoint=endpoint)
    assert client.url("physical_samples/") == "https://host/prefix/physical_samples/"


@pytest.mark.parametrize(
    "endpoint", ["ftp://host/", "not a url", "https://user:pw@host/", "https://host/?a=1"]
)
def test_bad_endpoints_are_refused(endpoint):
    with pytest.raises(ConfigurationError):
        Client(api_key="k", endpoint=endpoint)


def test_plain_http_only_to_loopback_unless_allowed():
    with pytest.raises(ConfigurationError, match="plain http"):
        Client(api_key="k", endpoint="http://api.example.org/")
    assert Client(api_key="k", endpoint="http://api.example.org/", allow_insecure=True)
    for host in ("127.0.0.1", "127.5.0.1", "localhost", "[::1]"):
        assert Client(api_key="k", endpoint=f"http://{host}:8000/")


def test_switching_tls_verification_off_warns():
    with pytest.warns(UserWarning, match="verification is off"):
        Client(api_key="k", verify=False)


def test_key_never_in_repr_and_a_pickled_client_works():
    import pickle

    client = Client(api_key="sup3r-secret-key", endpoint="https://host/")
    assert "sup3r" not in repr(client)
    assert "sup3r" not in str(client)
    copy = pickle.loads(pickle.dumps(client))  # as sent to a dask worker
    assert copy.api_key == "sup3r-secret-key"
    assert copy.session is not client.session


def test_sdk_client_is_accepted_without_the_sdk():
    class SdkLike:
        api_key = "sdk-key"
        endpoint = "https://api.atomscale.ai/"

    client = resolve_client(SdkLike())
    assert isinstance(client, Client)
    assert client.api_key == "sdk-key"
    with pytest.raises(TypeError, match="api_key and endpoint"):
        resolve_client(object())


def test_a_session_serves_one_request_at_a_time_and_every_thread():
    client = Client(api_key="k", endpoint="https://host/")
    sessions = []
    thread = threading.Thread(target=lambda: sessions.append(client.session))
    thread.start()
    thread.join()
    # Given back after use, the session another thread had is the one this thread gets.
    assert client.session is sessions[0]
    with client._sessions.lend() as busy:
        assert client.session is not busy  # never two requests on one session at once
    assert client.session.headers["User-Agent"].startswith(
        f"atomscale-accessors/{atomscale_accessors.__version__} (Python/"
    )


def test_short_lived_threads_reuse_one_kept_alive_connection(atomscale_server):
    # An upload's pool is made anew for each sample of a lot: with a session per thread,
    # every sample opened a connection of its own.
    from fault_proxy import FaultProxy

    with FaultProxy(atomscale_server.endpoint) as proxy:
        client = Client(api_key=atomscale_server.api_key, endpoint=proxy.endpoint)
        sample_id = atomscale_server.create_sample(f"reuse {uuid.uuid4()}")
        for _ in range(5):
            thread = threading.Thread(target=client.list_annotations, args=(sample_id,))
            thread.start()
            thread.join()
        assert len(proxy.requests) == 5
        assert proxy.connections == 1

        # Requests at the same time each have their own session, and so connection.
        barrier = threading.Barrier(3)

        def at_once() -> None:
            barrier.wait()
            client.list_annotations(sample_id)

        threads = [threading.Thread(target=at_once) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(proxy.requests) == 8
        assert proxy.connections <= 3  # the idle session's connection, and two new ones at most


def test_every_route(client, atomscale_server):
    sample = client.create_sample("wafer-42")
    sid = sample["id"]
    assert [s["id"] for s in client.list_samples(sid)] == [sid]
    with pytest.raises(ApiError) as info:
        client.create_sample("wafer-42")
    assert info.value.status_code == 409
    assert info.value.detail["physical_sample_id"] == sid

    one = client.create_annotation(sid, THICKNESS)
    assert set(one) >= {
        "id",
        "physical_sample_id",
        "annotation_metadata",
        "last_updated",
        "version",
    }
    bulk = client.create_annotations(
        sid, [{**THICKNESS, "coord_x": 3.0, "metadata": {"site": 2}}, {**THICKNESS, "coord_x": 4.5}]
    )
    assert [a["coord_x"] for a in bulk] == [3.0, 4.5]
    assert bulk[0]["annotation_metadata"] == {"site": 2}
    listed = client.list_annotations(sid, x_range=(1.0, 3.0), y_range=(2.0, 2.0))
    assert sorted(a["coord_x"] for a in listed) == [1.5, 3.0]
    updated = client.update_annotation(sid, one["id"], {"property_value": 99.0})
    assert updated["property_value"] == 99.0
    assert updated["version"] != one["version"]
    assert atomscale_server.request_count() == 7


def test_errors_carry_status_and_detail(client, atomscale_server):
    missing = str(uuid.uuid4())
    with pytest.raises(ApiError) as info:
        client.list_annotations(missing)
    assert info.value.status_code == 404
    assert isinstance(info.value, AtomscaleError)
    assert info.value.detail
    sid = atomscale_server.create_sample("s")
    with pytest.raises(ApiError) as info:
        client.create_annotations(sid, [{"property_name": "thickness"}])
    assert info.value.status_code == 422
    assert info.value.detail[0]["loc"][-1] == "property_value"


def test_wrong_key_is_401_and_never_shown(atomscale_server, caplog):
    wrong = Client(api_key="wrong-key-0123456789", endpoint=atomscale_server.endpoint)
    sid = atomscale_server.create_sample("s")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ApiError) as info:
        fetch(sid, client=wrong)
    assert info.value.status_code == 401
    assert "wrong-key" not in str(info.value)
    assert "wrong-key" not in caplog.text


@pytest.mark.parametrize(
    "bad", ["../x", "abc?x=1", "", None, 42, "0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a1"]
)
def test_ids_are_checked_before_any_request(client, atomscale_server, bad):
    with pytest.raises(InvalidIdentifierError):
        client.list_annotations(bad)
    with pytest.raises(InvalidIdentifierError):
        client.update_annotation(str(uuid.uuid4()), bad, {})
    assert atomscale_server.request_count() == 0


def test_connection_refused_is_known_not_sent():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # One attempt: the transport's retries of a GET are tested in test_transport_retry.py.
    client = Client(api_key="k", endpoint=f"http://127.0.0.1:{port}/", retry=ONCE)
    with pytest.raises(TransportError) as info:
        client.list_samples()
    assert info.value.sent is False
    assert isinstance(info.value, ConnectionError)


def test_read_timeout_is_known_maybe_sent(atomscale_server):
    client = Client(
        api_key=atomscale_server.api_key,
        endpoint=atomscale_server.endpoint,
        timeout=(5, 0.3),
        retry=ONCE,
    )
    atomscale_server.inject("latency", seconds=1.0, route="list_samples")
    with pytest.raises(TransportError) as info:
        client.list_samples()
    assert info.value.sent is True
    assert atomscale_server.api_key not in str(info.value)


def test_dropped_connection_is_maybe_sent(client, atomscale_server):
    sid = atomscale_server.create_sample("s")
    atomscale_server.inject("drop_after_commit", route="bulk_create")
    with pytest.raises(TransportError) as info:
        client.create_annotations(sid, [THICKNESS])
    assert info.value.sent is True
    assert atomscale_server.annotation_count(sid) == 1


def test_retry_after_is_read(client, atomscale_server):
    # Whole seconds: Retry-After carries no fractions (the server refuses to send one).
    # A POST, which the transport does not repeat: the 429 reaches the caller.
    atomscale_server.inject("rate_limited", route="create_sample", retry_after=3)
    with pytest.raises(ApiError) as info:
        client.create_sample("wafer")
    assert info.value.status_code == 429
    assert info.value.retry_after == 3.0


def test_fetch_returns_typed_frame(client, atomscale_server):
    sid = atomscale_server.create_sample("s")
    empty = fetch(sid, client=client)
    assert list(empty.columns) == list(ANNOTATION_COLUMNS)
    assert len(empty) == 0
    client.create_annotations(
        sid,
        [THICKNESS, {**THICKNESS, "property_name": "sheet_resistance", "property_unit": "ohm/sq"}],
    )
    frame = fetch(sid, client=client, property_name="thickness")
    assert list(frame.columns) == list(ANNOTATION_COLUMNS)
    assert len(frame) == 1
    assert frame["property_value"].dtype == "float64"
    assert frame["coord_z"].isna().all()
    assert str(frame["last_updated"].dt.tz) == "UTC"
    with pytest.raises(ApiError) as info:
        fetch(str(uuid.uuid4()), client=client)
    assert info.value.status_code == 404


def test_fetch_uses_environment(env_client, atomscale_server):
    sid = atomscale_server.create_sample("s")
    assert len(fetch(sid)) == 0


def test_errors_survive_pickling():
    import pickle

    import pandas as pd

    from atomscale_accessors.errors import UploadError

    error = ApiError(429, {"detail": "slow down"}, method="POST", path="/x", retry_after=1.5)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status_code, copy.detail, copy.retry_after, str(copy)) == (
        429,
        {"detail": "slow down"},
        1.5,
        str(error),
    )
    upload = UploadError("stopped", created=pd.DataFrame(), not_created=pd.DataFrame({"a": [1]}))
    assert pickle.loads(pickle.dumps(upload)).not_created["a"].tolist() == [1]
    assert pickle.loads(pickle.dumps(TransportError("x", sent=False))).sent is False


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9/", "https://api.example.org/"])
def test_request_bodies_leave_in_pieces_of_a_quarter_megabyte(endpoint):
    # Each piece of a body must leave within the connect timeout; urllib3's pool manager
    # hands every connection its own 16 kB default, which would mean some 60 sends per
    # bulk request of 5000 records. The connections a client's session makes use ours.
    from atomscale_accessors.deadline import BODY_PIECE

    client = Client(api_key="k" * 20, endpoint=endpoint)
    pool = client.session.get_adapter(endpoint).poolmanager.connection_from_url(endpoint)
    connection = pool._new_conn()  # made as the pool makes every connection; not connected
    assert connection.blocksize == BODY_PIECE == 256 * 1024


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers ``[]`` to everything, sets a cookie on the first answer, and records the
    method, path, cookie, length and body of every request."""

    seen: list[tuple[str, str, str | None, str | None, bytes]]

    def _answer(self) -> None:
        length = self.headers.get("Content-Length")
        body = self.rfile.read(int(length)) if length else b""
        first = not self.seen
        self.seen.append((self.command, self.path, self.headers.get("Cookie"), length, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        if first:
            self.send_header("Set-Cookie", "lb=node-7; Path=/")
        self.end_headers()
        self.wfile.write(b"[]")

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_requests_carry_query_body_and_the_cookies_the_server_set():
    # The client prepares its requests itself rather than through the requests session:
    # what reaches the server must be what the session would have sent.
    handler = type("Recorder", (_Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(api_key="k" * 20, endpoint=f"http://127.0.0.1:{server.server_port}/")
        sample = str(uuid.uuid4())
        client.request(
            "GET",
            f"physical_samples/{sample}/annotations/",
            params={"property_name": "Rs ü/□", "x_min": -1.5, "char_source_type": None},
        )
        client.request("POST", f"physical_samples/{sample}/annotations/bulk", json_body={"a": 1})
        client.request("PATCH", f"physical_samples/{sample}/annotations/{sample}")
    finally:
        server.shutdown()
        server.server_close()
    (get, post, patch) = handler.seen
    assert get[:4] == (
        "GET",
        f"/physical_samples/{sample}/annotations/?property_name=Rs+%C3%BC%2F%E2%96%A1&x_min=-1.5",
        None,
        None,
    )
    assert post == (
        "POST",
        f"/physical_samples/{sample}/annotations/bulk",
        "lb=node-7",
        "8",
        b'{"a": 1}',
    )
    assert patch[2:] == ("lb=node-7", "0", b"")
