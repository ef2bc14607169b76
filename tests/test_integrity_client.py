"""Integrity of the client against misbehaving servers and networks (real sockets only).

- the fault proxy the tests use, checked fault by fault against a real local server;
- the key: never reachable from an error (context, cause, attributes, pickles with and
  without tblib), never shown in part where an echo of it is cut, checked when the client
  is made, never in a log record;
- a total deadline per request, whatever the server does with its answer;
- which hosts count as loopback for plain http.
"""

from __future__ import annotations

import copyreg
import gc
import json
import logging
import pickle
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import requests
import tblib.pickling_support
from conftest import THICKNESS_MAPPING
from fault_proxy import FaultProxy

from atomscale_accessors import Client, RetryPolicy
from atomscale_accessors.errors import (
    ApiError,
    AtomscaleError,
    ConfigurationError,
    TransportError,
)

if TYPE_CHECKING:
    from atomscale_accessors.server import LocalServer

FAST = RetryPolicy(max_attempts=3, backoff=0.01, max_wait=0.2, settle=0.05)
ANNOTATION = {"property_name": "thickness", "property_value": 1.5, "coord_x": 0.0}
# A key with a beginning no message contains by chance ("zq" is not hex).
ECHO_KEY = "zq" + secrets.token_hex(20)


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch):
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxy(atomscale_server) -> Iterator[FaultProxy]:
    """A fault proxy in front of the test's local server."""
    with FaultProxy(atomscale_server.endpoint) as fault_proxy:
        yield fault_proxy


def proxy_threads(proxy: FaultProxy) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"fault-proxy-{proxy.port}")]


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def idle_connections(session: requests.Session, url: str) -> set[int]:
    """The local ports of a session's idle connections to ``url``'s host.

    A port that stays the same over requests means one connection kept alive throughout
    (urllib3 reconnects a dropped connection with the same object, so its count of
    connections made does not tell).
    """
    pools = session.get_adapter(url).poolmanager.pools
    keys = pools.keys()  # (the container refuses iteration, for thread safety)
    return {
        conn.sock.getsockname()[1]
        for key in keys
        for conn in list(pools[key].pool.queue)
        if conn is not None and conn.sock is not None
    }


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# == the fault proxy =========================================================================
class _Api:
    """Plain requests to the server behind a proxy, on one kept-alive session."""

    def __init__(self, proxy: FaultProxy, server: LocalServer) -> None:
        self.base = proxy.endpoint
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["X-API-KEY"] = server.api_key

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.base + path, timeout=10)

    def bulk(self, sample_id: str, n: int = 1) -> requests.Response:
        body = {"annotations": [{**ANNOTATION, "coord_x": float(i)} for i in range(n)]}
        path = f"physical_samples/{sample_id}/annotations/bulk"
        return self.session.post(self.base + path, json=body, timeout=10)


def test_proxy_forwards_requests_on_kept_alive_connections(proxy, atomscale_server, sample_id):
    api = _Api(proxy, atomscale_server)
    assert api.get("physical_samples/").status_code == 200
    first = idle_connections(api.session, proxy.endpoint)
    assert len(first) == 1
    direct = requests.get(
        f"{atomscale_server.endpoint}physical_samples/",
        headers={"X-API-KEY": atomscale_server.api_key},
        timeout=10,
    )
    for _ in range(3):
        answer = api.get("physical_samples/")
        assert answer.status_code == 200
        assert answer.json() == direct.json()
    assert api.bulk(sample_id, 3).status_code == 200
    assert atomscale_server.annotation_count(sample_id) == 3
    listed = api.get(f"physical_samples/{sample_id}/annotations/?property_name=thickness")
    assert len(listed.json()) == 3
    assert idle_connections(api.session, proxy.endpoint) == first, (
        "the client connection was not kept alive"
    )
    assert proxy.requests == [
        *[("GET", "/physical_samples/")] * 4,
        ("POST", f"/physical_samples/{sample_id}/annotations/bulk"),
        ("GET", f"/physical_samples/{sample_id}/annotations/"),
    ]
    assert proxy.endpoint == f"http://127.0.0.1:{proxy.port}/"


def test_proxy_cut_before_never_reaches_the_server(proxy, atomscale_server, sample_id):
    api = _Api(proxy, atomscale_server)
    proxy.add("cut_before", method="POST", path=r"/bulk$")
    with pytest.raises(requests.ConnectionError):
        api.bulk(sample_id)
    assert atomscale_server.request_count("bulk_create") == 0
    assert atomscale_server.annotation_count(sample_id) == 0
    assert api.bulk(sample_id).status_code == 200  # spent: the next one goes through
    assert atomscale_server.annotation_count(sample_id) == 1


def test_proxy_cut_after_lets_the_server_commit(proxy, atomscale_server, sample_id):
    api = _Api(proxy, atomscale_server)
    proxy.add("cut_after", path="bulk")
    with pytest.raises(requests.ConnectionError):
        api.bulk(sample_id, 2)
    assert atomscale_server.annotation_count(sample_id) == 2


def test_proxy_delay_answers_after_the_commit(proxy, atomscale_server, sample_id):
    api = _Api(proxy, atomscale_server)
    proxy.add("delay", path="bulk", seconds=1.0)
    answers: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answers.append(api.bulk(sample_id)))
    start = time.monotonic()
    thread.start()
    assert wait_for(lambda: atomscale_server.annotation_count(sample_id) == 1)
    assert thread.is_alive() and not answers, "answered before the delay was over"
    thread.join(10)
    assert answers[0].status_code == 200
    assert time.monotonic() - start >= 1.0


def test_proxy_trickle_sends_the_answer_slowly(proxy, atomscale_server):
    api = _Api(proxy, atomscale_server)
    expected = api.get("physical_samples/").json()
    proxy.add("trickle", path="physical_samples", chunk=8, interval=0.01)
    start = time.monotonic()
    answer = api.get("physical_samples/")
    took = time.monotonic() - start
    assert answer.json() == expected
    size = len(answer.content) + 100  # at least the status line and headers too
    assert took >= size / 8 * 0.01 * 0.8, took


def test_proxy_trickle_lasts_its_limit_and_stops_when_the_client_leaves(proxy, atomscale_server):
    proxy.add("trickle", path="physical_samples", chunk=1, interval=0.02, limit=30)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            f"GET /physical_samples/ HTTP/1.1\r\nHost: x\r\nX-API-KEY: {atomscale_server.api_key}"
            "\r\n\r\n".encode()
        )
        received = b""
        while len(received) < 20:
            received += sock.recv(100)
        assert received.startswith(b"HTTP/1.1 200 OK")
        assert len(received) < 40, "not trickled"
        assert proxy_threads(proxy), "no thread serves the connection"
    # The client went away: the trickle stops long before its 30 s.
    assert wait_for(lambda: len(proxy_threads(proxy)) == 1, 3.0), proxy_threads(proxy)


def test_proxy_rewrite_changes_the_body_and_the_status(proxy, atomscale_server, sample_id):
    api = _Api(proxy, atomscale_server)
    proxy.add("rewrite", path="annotations/$", fn=lambda body: body + b"  ")
    proxy.add("rewrite", path="annotations/$", fn=lambda body: b'{"detail": "no"}', status=503)
    first = api.get(f"physical_samples/{sample_id}/annotations/")
    assert (first.status_code, first.content) == (200, b"[]  ")
    second = api.get(f"physical_samples/{sample_id}/annotations/")
    assert (second.status_code, second.json()) == (503, {"detail": "no"})
    assert second.headers["Content-Length"] == str(len(b'{"detail": "no"}'))
    assert atomscale_server.request_count("list_annotations") == 2


def test_proxy_replay_answers_a_stale_answer(proxy, atomscale_server, sample_id):
    api = _Api(proxy, atomscale_server)
    path = f"physical_samples/{sample_id}/annotations/"
    proxy.add("replay", method="GET", path="annotations/$")
    assert api.get(path).json() == []  # forwarded and remembered
    assert api.bulk(sample_id).status_code == 200  # another method: not the fault's
    assert api.get(path).json() == [], "not the stale answer"
    assert atomscale_server.request_count("list_annotations") == 1
    assert len(api.get(path).json()) == 1  # spent: forwarded again


def test_proxy_answer_never_forwards(proxy, atomscale_server):
    api = _Api(proxy, atomscale_server)
    proxy.add(
        "answer",
        path="physical_samples",
        status=500,
        body=b"<html>oops</html>",
        headers={"Content-Type": "text/html", "X-Extra": "1"},
    )
    answer = api.get("physical_samples/")
    assert (answer.status_code, answer.text) == (500, "<html>oops</html>")
    assert answer.headers["Content-Type"] == "text/html"
    assert answer.headers["X-Extra"] == "1"
    assert atomscale_server.request_count() == 0
    assert api.get("physical_samples/").status_code == 200


def test_proxy_faults_match_method_path_and_times_first_queued_first(proxy, atomscale_server):
    api = _Api(proxy, atomscale_server)
    proxy.add("answer", method="POST", path="physical", status=418, times=5)
    proxy.add("answer", path=r"^/physical_samples/$", status=429, times=2)
    proxy.add("answer", path=r"^/physical_samples/$", status=401)
    statuses = [api.get("physical_samples/").status_code for _ in range(4)]
    assert statuses == [429, 429, 401, 200]
    proxy.add("answer", path="physical", status=503, times=3)
    proxy.clear()
    assert proxy.requests == []
    assert api.get("physical_samples/").status_code == 200
    with pytest.raises(ValueError, match="unknown fault"):
        proxy.add("explode")
    with pytest.raises(TypeError, match="seconds"):
        proxy.add("delay")
    with pytest.raises(TypeError, match="no option"):
        proxy.add("cut_before", seconds=1)


def test_proxy_forwards_a_chunked_answer(proxy):
    # The local server answers with Content-Length; a streaming upstream answers chunked.
    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen()

        def serve() -> None:
            conn, _ = upstream.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n"
                )

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = upstream.getsockname()[1]
        with FaultProxy(f"http://127.0.0.1:{port}/") as chunked:
            answer = requests.get(chunked.endpoint + "x", timeout=10)
        thread.join(10)
    assert answer.json() == [1, 2]
    assert answer.headers["Content-Length"] == "5"


def test_proxy_close_closes_every_connection(atomscale_server):
    proxy = FaultProxy(atomscale_server.endpoint).start()
    api = _Api(proxy, atomscale_server)
    assert api.get("physical_samples/").status_code == 200
    proxy.add("delay", path="physical", seconds=30)
    failures: list[BaseException] = []

    def wait_for_the_answer() -> None:
        try:
            api.get("physical_samples/")
        except requests.ConnectionError as exc:
            failures.append(exc)

    waiting = threading.Thread(target=wait_for_the_answer)
    waiting.start()
    assert wait_for(lambda: len(proxy.requests) == 2)
    start = time.monotonic()
    proxy.close()
    waiting.join(10)
    assert time.monotonic() - start < 5
    assert not waiting.is_alive()
    assert len(failures) == 1, "the delayed request was answered instead of cut"
    assert proxy_threads(proxy) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()


# == the key is never reachable from an error ================================================
def key_pieces(key: str, size: int = 12) -> set[str]:
    """Every piece of the key long enough to recognise it by."""
    return {key[i : i + size] for i in range(len(key) - size + 1)}


def assert_key_absent(data: str | bytes, key: str, where: str = "") -> None:
    for piece in key_pieces(key):
        needle: str | bytes = piece.encode() if isinstance(data, bytes) else piece
        assert needle not in data, f"part of the key is reachable {where}: {data[:300]!r}"


def reachable(root: Any, limit: int = 200_000) -> Iterator[tuple[str, Any]]:
    """Every object reachable from ``root`` through exception links, attributes and
    containers, with the route to it."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("error", root)]
    skip = (type, type(pytest), type(reachable), type(print))
    while stack and len(seen) < limit:
        route, item = stack.pop()
        if id(item) in seen or item is None or isinstance(item, skip):
            continue
        seen.add(id(item))
        yield route, item
        if isinstance(item, (str, bytes, int, float, bool)):
            continue
        if isinstance(item, BaseException):
            for name in ("__cause__", "__context__", "args", "__notes__"):
                stack.append((f"{route}.{name}", getattr(item, name, None)))
        if isinstance(item, dict):
            for key, value in item.items():
                stack.append((f"{route}[{key!r}]", value))
                stack.append((f"{route} (key)", key))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((f"{route}[{i}]", value) for i, value in enumerate(item))
        for name in getattr(type(item), "__slots__", ()):
            stack.append((f"{route}.{name}", getattr(item, name, None)))
        attributes = getattr(item, "__dict__", None)
        if isinstance(attributes, dict):
            stack.append((f"{route}.__dict__", attributes))


def assert_error_holds_no_key(error: BaseException, key: str) -> None:
    for route, item in reachable(error):
        if isinstance(item, (str, bytes)):
            assert_key_absent(item, key, f"through {route}")
    assert_key_absent("".join(traceback.format_exception(error)), key, "in the traceback")
    assert_key_absent(str(error) + repr(error), key, "in str or repr")


@pytest.fixture
def restore_pickling() -> Iterator[None]:
    """tblib registers its reducers process-wide: take them back after the test."""
    saved = copyreg.dispatch_table.copy()
    yield
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(saved)


def _refused(server: LocalServer, sample_id: str) -> BaseException:
    client = Client(
        api_key=server.api_key, endpoint=f"http://127.0.0.1:{closed_port()}/", retry=FAST
    )
    with pytest.raises(TransportError) as info:
        client.list_samples()
    assert info.value.sent is False
    return info.value


def _server_stopped(server: LocalServer, sample_id: str) -> BaseException:
    client = Client(api_key=server.api_key, endpoint=server.endpoint)
    client.list_samples()  # a kept-alive connection to a server about to go away
    server.stop()
    with pytest.raises(TransportError) as info:
        client.create_annotations(sample_id, [ANNOTATION])
    return info.value


def _read_timeout(server: LocalServer, sample_id: str) -> BaseException:
    client = Client(api_key=server.api_key, endpoint=server.endpoint, timeout=(5, 0.2))
    server.set_latency(1.0)
    with pytest.raises(TransportError) as info:
        client.create_annotations(sample_id, [ANNOTATION])
    assert info.value.sent is True and info.value.timed_out is True
    return info.value


def _dropped(server: LocalServer, sample_id: str) -> BaseException:
    client = Client(api_key=server.api_key, endpoint=server.endpoint)
    server.inject("drop_after_commit", route="bulk_create")
    with pytest.raises(TransportError) as info:
        client.create_annotations(sample_id, [ANNOTATION])
    assert info.value.sent is True
    return info.value


def _deadline(server: LocalServer, sample_id: str) -> BaseException:
    with FaultProxy(server.endpoint) as proxy:
        proxy.add("trickle", path="bulk", chunk=1, interval=0.05, limit=10)
        client = Client(api_key=server.api_key, endpoint=proxy.endpoint, deadline=0.5)
        with pytest.raises(TransportError) as info:
            client.create_annotations(sample_id, [ANNOTATION])
    return info.value


def _wrong_key(server: LocalServer, sample_id: str) -> BaseException:
    client = Client(api_key="wrong-" + secrets.token_hex(16), endpoint=server.endpoint)
    with pytest.raises(ApiError) as info:
        client.list_annotations(sample_id)
    assert info.value.status_code == 401
    return info.value


def _echoed(server: LocalServer, sample_id: str) -> BaseException:
    with FaultProxy(server.endpoint) as proxy:
        body = ("." * 190 + server.api_key + " was echoed").encode()
        proxy.add("answer", path="physical_samples", status=200, body=body)
        client = Client(api_key=server.api_key, endpoint=proxy.endpoint)
        with pytest.raises(ApiError) as info:
            client.list_samples()
    return info.value


def _upload_refused(server: LocalServer, sample_id: str) -> BaseException:
    client = Client(
        api_key=server.api_key, endpoint=f"http://127.0.0.1:{closed_port()}/", retry=FAST
    )
    frame = pd.DataFrame({"x_mm": [0.0, 1.0], "y_mm": [0.0, 0.0], "thk": [1.0, 2.0]})
    with pytest.raises(AtomscaleError) as info:
        frame.atomscale.upload(sample_id, client=client, progress_bar=False, **THICKNESS_MAPPING)
    return info.value


PROVOKED = {
    "refused": _refused,
    "server-stopped": _server_stopped,
    "read-timeout": _read_timeout,
    "dropped-after-commit": _dropped,
    "deadline": _deadline,
    "401": _wrong_key,
    "echoed-not-json": _echoed,
    "upload-refused": _upload_refused,
}


@pytest.mark.parametrize("tblib_mode", ["plain", "tblib-for-the-error", "tblib-everywhere"])
@pytest.mark.parametrize("provoke", list(PROVOKED))
def test_no_error_holds_the_key_even_pickled(
    provoke, tblib_mode, atomscale_server, sample_id, restore_pickling
):
    key = atomscale_server.api_key
    error = PROVOKED[provoke](atomscale_server, sample_id)
    gc.collect()
    assert isinstance(error, AtomscaleError)
    assert error.__context__ is None or isinstance(error.__context__, AtomscaleError)
    assert_error_holds_no_key(error, key)
    if tblib_mode == "tblib-for-the-error":
        tblib.pickling_support.install(error)
    elif tblib_mode == "tblib-everywhere":
        tblib.pickling_support.install()
    data = pickle.dumps(error)
    assert_key_absent(data, key, "in the pickle")
    copy = pickle.loads(data)
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert_error_holds_no_key(copy, key)


def test_a_pickled_transport_error_keeps_what_it_says(atomscale_server, sample_id):
    error = _read_timeout(atomscale_server, sample_id)
    tblib.pickling_support.install(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.sent, copy.timed_out) == (True, True)
    assert copy.__traceback__ is not None  # tblib carried the traceback, not the context


# == the key is never shown in part where an echo of it is cut ================================
def _echo_body(cut: int, shown: int) -> bytes:
    """A non-JSON body with the key starting ``shown`` characters before ``cut``."""
    return ("." * (cut - shown) + ECHO_KEY + " <- the key, echoed").encode()


@pytest.mark.parametrize("shown", [4, 5, 11, 12, 30, len(ECHO_KEY) - 1, len(ECHO_KEY), 0])
@pytest.mark.parametrize(
    "where",
    ["not-json (cut at 200)", "error text (cut at 1000)"],
)
def test_an_echo_of_the_key_across_the_cut_is_masked(where, shown, atomscale_server):
    with FaultProxy(atomscale_server.endpoint) as proxy:
        if where.startswith("not-json"):
            proxy.add("answer", status=200, body=_echo_body(200, shown))
        else:
            proxy.add("answer", status=500, body=_echo_body(1000, shown))
        # One attempt: the transport would repeat a GET answered 500.
        client = Client(
            api_key=ECHO_KEY, endpoint=proxy.endpoint, retry=RetryPolicy(max_attempts=1)
        )
        with pytest.raises(ApiError) as info:
            client.list_samples()
    error = info.value
    # The first 4 characters of the key, or any longer beginning, are nowhere.
    for text in (str(error), repr(error), repr(error.detail)):
        assert ECHO_KEY[:4] not in text, text[-120:]
    if shown >= 4:
        assert "***" in repr(error.detail), "the echo was not seen: the test proves nothing"
    assert isinstance(error.detail, str)


def test_an_echo_inside_a_json_detail_is_masked_keys_too(atomscale_server):
    detail = {
        "detail": [
            {"loc": ["header", "X-API-KEY"], "msg": f"bad key {ECHO_KEY}", "input": ECHO_KEY},
            {ECHO_KEY: "as a name"},
        ]
    }
    with FaultProxy(atomscale_server.endpoint) as proxy:
        proxy.add(
            "answer",
            status=422,
            body=json.dumps(detail),
            headers={"Content-Type": "application/json"},
        )
        # One attempt: the transport would repeat a GET answered 500.
        client = Client(
            api_key=ECHO_KEY, endpoint=proxy.endpoint, retry=RetryPolicy(max_attempts=1)
        )
        with pytest.raises(ApiError) as info:
            client.list_samples()
    assert info.value.status_code == 422
    assert info.value.detail[0]["input"] == "***"
    for text in (str(info.value), repr(info.value.detail)):
        assert ECHO_KEY[:4] not in text


# == the key is checked when the client is made ===============================================
PASTED = {
    "zero-width space": "\u200b",
    "no-break space": "\u00a0",
    "e acute": "\u00e9",
    "tab": "\t",
    "newline": "\n",
    "NUL": "\x00",
    "DEL": "\x7f",
    "right-to-left mark": "\u200f",
}


@pytest.mark.parametrize("name", list(PASTED))
def test_a_key_with_a_character_pasted_along_is_refused_when_the_client_is_made(name, monkeypatch):
    char = PASTED[name]
    key = ECHO_KEY[:20] + char + ECHO_KEY[20:]
    opened: list[Any] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: opened.append(a))
    with pytest.raises(ConfigurationError) as info:
        Client(api_key=key, endpoint="https://api.atomscale.ai/")
    message = str(info.value)
    assert f"U+{ord(char):04X}" in message
    assert "position 21" in message
    for text in (message, repr(info.value), "".join(traceback.format_exception(info.value))):
        assert_key_absent(text, ECHO_KEY)
        assert ECHO_KEY[:8] not in text
    if char != "\x00":  # (no environment variable can hold it)
        monkeypatch.setenv("AS_API_KEY", key)
        with pytest.raises(ConfigurationError, match=f"U\\+{ord(char):04X}"):
            Client(endpoint="https://api.atomscale.ai/")
    assert opened == []


@pytest.mark.parametrize("padded", [" {}", "{}  ", "\t{} \r\n", "\u00a0{}\u2003"])
def test_blanks_around_the_key_are_stripped(padded, atomscale_server, sample_id, monkeypatch):
    key = padded.format(atomscale_server.api_key)
    client = Client(api_key=key, endpoint=atomscale_server.endpoint)
    assert client.api_key == atomscale_server.api_key
    assert client.list_annotations(sample_id) == []
    monkeypatch.setenv("AS_API_KEY", key)
    assert Client(endpoint=atomscale_server.endpoint).list_annotations(sample_id) == []


def test_a_blank_key_is_no_key(monkeypatch):
    with pytest.raises(ConfigurationError, match="no Atomscale API key"):
        Client(api_key=" \t\n", endpoint="https://api.atomscale.ai/")
    # A blank first variable does not hide the second.
    monkeypatch.setenv("AS_API_KEY", "   ")
    monkeypatch.setenv("ATOMSCALE_API_KEY", "second-key")
    assert Client().api_key == "second-key"
    with pytest.raises(ConfigurationError, match="must be a string"):
        Client(api_key=b"bytes-key")  # type: ignore[arg-type]


# == a total deadline per request =============================================================
def test_defaults_bound_every_request():
    client = Client(api_key="k", endpoint="https://api.atomscale.ai/")
    assert client.timeout == (10.0, 60.0)
    assert client.deadline == 180.0
    assert Client(api_key="k", deadline=None).deadline is None
    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(ConfigurationError, match="deadline"):
            Client(api_key="k", deadline=bad)


@pytest.mark.parametrize(
    "trickle",
    [
        pytest.param({"chunk": 1, "interval": 0.1}, id="status-and-headers-trickle"),
        pytest.param({"chunk": 64, "interval": 0.02}, id="body-trickles"),
    ],
)
@pytest.mark.parametrize("route", ["list", "bulk"])
def test_a_trickled_answer_is_cut_at_the_deadline(trickle, route, proxy, atomscale_server):
    sample_id = atomscale_server.create_sample("trickled")
    client = Client(
        api_key=atomscale_server.api_key, endpoint=proxy.endpoint, timeout=(5, 5), deadline=1.5
    )
    if route == "bulk":
        proxy.add("trickle", method="POST", limit=20, **trickle)
        call = lambda: client.create_annotations(sample_id, [ANNOTATION])  # noqa: E731
    else:
        proxy.add("trickle", method="GET", limit=20, **trickle)
        call = lambda: client.list_annotations(sample_id)  # noqa: E731
    start = time.monotonic()
    with pytest.raises(TransportError) as info:
        call()
    took = time.monotonic() - start
    assert 1.4 <= took < 2.5, took
    assert (info.value.sent, info.value.timed_out) == (True, True)
    # Only a request that changes something may have taken effect.
    assert ("may have taken effect" in str(info.value)) == (route == "bulk")
    assert "deadline" in str(info.value)
    assert atomscale_server.api_key not in str(info.value)
    # The client is fine afterwards: the next request (a fresh connection) succeeds.
    assert isinstance(client.list_annotations(sample_id), list)


class _BlackHole:
    """A loopback server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"

    def __enter__(self) -> _BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_a_silent_server_is_cut_at_the_deadline_before_the_read_timeout():
    with _BlackHole() as hole:
        client = Client(api_key="k", endpoint=hole.endpoint, timeout=(5, 30), deadline=1.0)
        start = time.monotonic()
        with pytest.raises(TransportError) as info:
            client.list_samples()
        took = time.monotonic() - start
    assert 0.9 <= took < 2.0, took
    assert (info.value.sent, info.value.timed_out) == (True, True)


def test_a_finished_request_is_left_alone_by_its_deadline(atomscale_server, sample_id):
    client = Client(
        api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, deadline=0.3
    )
    assert client.list_annotations(sample_id) == []
    first = idle_connections(client.session, client.endpoint)
    assert len(first) == 1
    time.sleep(0.6)  # the first request's deadline passes while its connection is idle
    assert client.list_annotations(sample_id) == []
    assert idle_connections(client.session, client.endpoint) == first, (
        "the deadline of a finished request cut its connection"
    )


def test_requests_under_a_deadline_still_work(atomscale_server, sample_id):
    client = Client(
        api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, deadline=10
    )
    n = 20_000
    created = client.create_annotations(
        sample_id, [{**ANNOTATION, "coord_x": float(i)} for i in range(n)]
    )
    assert len(created) == n
    assert len(client.list_annotations(sample_id)) == n
    one = client.update_annotation(sample_id, created[0]["id"], {"property_value": 2.5})
    assert one["property_value"] == 2.5
    assert client.list_samples(sample_id)[0]["id"] == sample_id
    # Many short requests from several threads, each under its own deadline.
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                client.list_samples(sample_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []


class _SlowReader:
    """A loopback server that reads a request body slowly, then answers ``[]``."""

    def __init__(self, bytes_per_second: float) -> None:
        self.sock = socket.socket()
        # a small receive window, so the body cannot vanish into kernel buffers
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.rate = bytes_per_second
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.received = len(rest)
            while self.received < length:
                piece = conn.recv(16384)
                if not piece:
                    return
                self.received += len(piece)
                time.sleep(len(piece) / self.rate)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def test_a_large_body_on_a_slow_link_is_not_cut_by_the_connect_timeout():
    # 8 MiB (the largest chunk) at 3 MB/s takes longer than the 1 s connect timeout.
    reader = _SlowReader(bytes_per_second=3e6)
    try:
        client = Client(api_key="k", endpoint=reader.endpoint, timeout=(1, 30), deadline=30)
        body = b" " * (8 * 2**20)
        start = time.monotonic()
        response = client.request("POST", "physical_samples/", data=body)
        took = time.monotonic() - start
    finally:
        reader.close()
    assert response.content == b"[]"
    assert reader.received == len(body)
    assert took > 1.0, "the body went out faster than the test needs to prove anything"


# == loopback, decided without resolving names ================================================
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("[::1]", True),
        ("[::ffff:127.0.0.1]", True),
        ("anything.localhost", False),
        ("api.localhost", False),
        ("localhost.", False),
        ("localhost.localdomain", False),
        ("127.0.0.1.nip.io", False),
        ("0.0.0.0", False),
        ("[::]", False),
        ("10.0.0.1", False),
    ],
)
def test_only_localhost_and_loopback_addresses_are_loopback(host, loopback, monkeypatch):
    def no_resolving(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a name was resolved to decide whether it is loopback")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolving)
    monkeypatch.setattr(socket, "gethostbyname", no_resolving)
    endpoint = f"http://{host}:8000/"
    if loopback:
        assert Client(api_key="k", endpoint=endpoint).endpoint.startswith("http://")
    else:
        with pytest.raises(ConfigurationError, match="plain http"):
            Client(api_key="k", endpoint=endpoint)
    # https is fine anywhere.
    assert Client(api_key="k", endpoint=f"https://{host}:8000/")


# == the key is in no log record, even from a server echoing it ================================
LOGGERS = ("atomscale_accessors", "urllib3", "urllib3.connectionpool", "requests")


def test_the_key_is_in_no_log_record_when_the_server_echoes_it(
    proxy, atomscale_server, sample_id, caplog
):
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    key = atomscale_server.api_key
    client = Client(api_key=key, endpoint=proxy.endpoint, retry=FAST)
    errors: list[ApiError] = []

    def failing(call: Callable[[], Any]) -> None:
        with pytest.raises(ApiError) as info:
            call()
        errors.append(info.value)

    # A 500 page echoing the key, one with the key across the 1,000-character cut: on
    # every attempt the transport makes of the GET, so its retries are logged too.
    attempts = FAST.max_attempts
    proxy.add("answer", status=500, body=f"<html>key {key} refused</html>".encode(), times=attempts)
    failing(client.list_samples)
    proxy.add("answer", status=500, body=("x" * 990 + key).encode(), times=attempts)
    failing(client.list_samples)
    # A success that is not JSON, the key across its 200-character cut.
    proxy.add("answer", status=200, body=("y" * 180 + key).encode())
    failing(client.list_samples)
    # A real 422, rewritten to echo the key in FastAPI's detail list.
    echo = {"detail": [{"loc": ["header"], "msg": f"key {key}", "input": key}]}
    proxy.add("rewrite", path="bulk", fn=lambda body: json.dumps(echo).encode())
    failing(lambda: client.create_annotations(sample_id, [{"property_name": "t"}]))
    assert errors[-1].status_code == 422
    # An upload whose first bulk request meets a 500 echoing the key: it is retried or
    # reported, and logged either way.
    proxy.add("answer", method="POST", path="bulk", status=500, body=f"echo {key}".encode())
    frame = pd.DataFrame({"x_mm": np.arange(6.0), "y_mm": np.zeros(6), "thk": np.ones(6)})
    try:
        frame.atomscale.upload(
            sample_id, client=client, chunksize=3, progress_bar=False, **THICKNESS_MAPPING
        )
    except AtomscaleError as exc:
        assert_error_holds_no_key(exc, key)

    for error in errors:
        assert "***" in repr(error.detail), "the echo never arrived: the test proves nothing"
        for text in (str(error), repr(error), repr(error.detail)):
            assert_key_absent(text, key)
            assert key[:8] not in text
    assert any(r.name.startswith("urllib3") for r in caplog.records), "urllib3 logged nothing"
    assert any(r.name.startswith("atomscale_accessors") for r in caplog.records)
    for record in caplog.records:
        texts = [record.getMessage(), str(record.args), record.exc_text or ""]
        if record.exc_info and record.exc_info[1] is not None:
            texts.append("".join(traceback.format_exception(record.exc_info[1])))
        for text in texts:
            assert_key_absent(text, key, f"in a record of {record.name}")
    assert_key_absent(caplog.text, key, "in the log")
    assert ("POST", f"/physical_samples/{sample_id}/annotations/bulk") in proxy.requests
