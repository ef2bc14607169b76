"""Secrets and trust: the key stays secret, transports are checked, ids are checked, and the
local server is strict about who may talk to it and literal about what it stores.
"""

from __future__ import annotations

import http.client
import json
import logging
import pickle
import secrets
import socket
import threading
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from conftest import HAS_SERVER, NO_SERVER, THICKNESS_MAPPING, module_server

if not HAS_SERVER:
    pytest.skip(NO_SERVER, allow_module_level=True)


from atomscale_accessors import Client, RetryPolicy, fetch
from atomscale_accessors.errors import (
    ApiError,
    AtomscaleError,
    ConfigurationError,
    InvalidIdentifierError,
    SampleNotFoundError,
    TransportError,
    UploadError,
)
from atomscale_accessors.server import LocalServer
from atomscale_accessors.server.app import create_app
from atomscale_accessors.server.store import Store

KEY = "sk-test-" + secrets.token_hex(20)
WRONG_KEY = "sk-wrong-" + secrets.token_hex(20)
FAST = RetryPolicy(max_attempts=3, backoff=0.01, max_wait=0.2, settle=0.05)
MAPPING = THICKNESS_MAPPING
LOGGERS = ("atomscale_accessors", "urllib3", "requests", "uvicorn", "uvicorn.error")


def points(n: int = 12) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x_mm": np.arange(n) * 2.5,
            "y_mm": np.zeros(n),
            "thk": 100.0 + np.arange(n) / 8.0,
        }
    )


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_key(*texts: str, keys: tuple[str, ...] = (KEY, WRONG_KEY)) -> None:
    for text in texts:
        for key in keys:
            assert key not in text, f"the key shows in:\n{text[:2000]}"
            # Not even a recognisable part of it.
            assert key[8:28] not in text, f"part of the key shows in:\n{text[:2000]}"


def everything_about(err: BaseException) -> str:
    """Message, repr, the traceback with every chained cause, and the structured fields."""
    parts = [str(err), repr(err), "".join(traceback.format_exception(err))]
    for attr in ("detail", "cause", "path", "method"):
        if hasattr(err, attr):
            parts.append(repr(getattr(err, attr)))
    for attr in ("created", "not_created", "unknown", "not_updated"):
        frame = getattr(err, attr, None)
        if isinstance(frame, pd.DataFrame):
            parts.append(frame.to_string())
    return "\n".join(parts)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    yield from module_server(api_key=KEY)


@pytest.fixture
def fresh(server) -> tuple[LocalServer, str]:
    if not server.running:
        server.start()
    server.clear_faults()
    server.set_limits(max_bulk_annotations=50_000, max_body_bytes=64 * 2**20)
    server.reset_counters()
    return server, server.create_sample(f"secrets-{uuid.uuid4()}")


@pytest.fixture
def logs(caplog) -> pytest.LogCaptureFixture:
    """Every library and HTTP logger captured at DEBUG."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG)
    return caplog


# -- reprs ----------------------------------------------------------------------------------
def test_reprs_never_show_the_key(server):
    client = Client(api_key=KEY, endpoint=server.endpoint, retry=FAST)
    assert_no_key(repr(client), str(client), repr(server), str(server), repr(FAST))
    assert "127.0.0.1" in repr(client)
    # The key is still there for whoever needs it on purpose.
    assert client.api_key == KEY == server.api_key


def test_error_reprs_never_show_the_key():
    errors = [
        ApiError(401, "Invalid API key", method="GET", path="/physical_samples/"),
        TransportError("GET /physical_samples/ could not reach the server", sent=False),
        ConfigurationError("no Atomscale API key"),
    ]
    for err in errors:
        assert_no_key(everything_about(err))


def test_a_pickled_client_keeps_the_key_but_its_repr_does_not_show_it(server):
    client = pickle.loads(pickle.dumps(Client(api_key=KEY, endpoint=server.endpoint)))
    assert client.api_key == KEY
    assert_no_key(repr(client))


# -- logs and errors when requests fail -----------------------------------------------------
def _inject(kind: str, **options: Any) -> Callable[[LocalServer], None]:
    return lambda srv: srv.inject(kind, route="bulk_create", **options)


FAILURES: dict[str, dict[str, Any]] = {
    "401-wrong-key": {"key": WRONG_KEY, "error": ApiError},
    "500-before-commit-every-time": {
        "setup": _inject("error_before_commit", status=500, times=100),
        "error": UploadError,
    },
    "500-after-commit": {"setup": _inject("error_after_commit", status=500), "error": None},
    "503-every-time": {
        "setup": _inject("error_before_commit", status=503, times=100),
        "error": UploadError,
    },
    "429": {"setup": _inject("rate_limited", retry_after=0), "error": None},
    "dropped-after-commit": {"setup": _inject("drop_after_commit"), "error": None},
    "dropped-and-unlistable": {
        "setup": lambda srv: (
            srv.inject("drop_after_commit", route="bulk_create"),
            srv.inject(
                "error_before_commit", status=500, route="list_annotations", after=1, times=100
            ),
        ),
        "error": UploadError,
    },
    "read-timeout": {
        "setup": lambda srv: srv.set_latency(0.4),
        "timeout": (5.0, 0.1),
        "error": (TransportError, UploadError),
    },
    "connection-refused": {"endpoint": "refused", "error": (TransportError, UploadError)},
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_the_key_stays_out_of_logs_and_errors_when_requests_fail(failure, fresh, logs, capfd):
    server, sample_id = fresh
    spec = FAILURES[failure]
    endpoint = server.endpoint
    if spec.get("endpoint") == "refused":
        endpoint = f"http://127.0.0.1:{closed_port()}/"
    client = Client(
        api_key=spec.get("key", KEY),
        endpoint=endpoint,
        retry=FAST,
        timeout=spec.get("timeout", (5.0, 30.0)),
    )
    if "setup" in spec:
        spec["setup"](server)

    def upload() -> None:
        points().atomscale.upload(
            sample_id, client=client, chunksize=4, max_workers=2, progress_bar=False, **MAPPING
        )

    try:
        if spec["error"] is None:
            upload()
        else:
            with pytest.raises(spec["error"]) as info:
                upload()
            assert isinstance(info.value, AtomscaleError)
            assert_no_key(everything_about(info.value))
    finally:
        server.clear_faults()
    assert logs.records, "nothing was logged: the test would prove nothing"
    assert_no_key(logs.text, *(str(r.args) for r in logs.records), *capfd.readouterr())


def test_a_server_echoing_the_key_has_it_masked(logs):
    # A misbehaving server (or proxy) that repeats the key in its error answers.
    with _EchoServer() as echo:
        client = Client(api_key=KEY, endpoint=echo.endpoint, retry=FAST)
        sid = str(uuid.uuid4())
        for mode in ("string", "list", "text", "ok-not-json"):
            echo.mode = mode
            with pytest.raises(ApiError) as info:
                client.list_samples(sid)
            assert_no_key(everything_about(info.value))
            assert "***" in str(info.value.detail), (mode, info.value.detail)
        echo.mode = "string"
        # The first request (listing what is stored) fails already: nothing is sent.
        with pytest.raises((ApiError, UploadError)) as upload:
            points(4).atomscale.upload(sid, client=client, progress_bar=False, **MAPPING)
        assert_no_key(everything_about(upload.value), logs.text)
        # The key did reach the echo server: the masking is what kept it out.
        assert echo.seen_keys and set(echo.seen_keys) == {KEY}


def test_the_library_never_turns_on_http_client_debug_output(fresh, capfd):
    # http.client prints raw request headers (the key among them) at debuglevel > 0; that
    # is the standard library's switch, so the library must never flip it itself.
    server, sample_id = fresh
    from atomscale_accessors.cli import main

    client = Client(api_key=KEY, endpoint=server.endpoint, retry=FAST)
    points(3).atomscale.upload(sample_id, client=client, progress_bar=False, **MAPPING)
    fetch(sample_id, client=client)
    assert http.client.HTTPConnection.debuglevel == 0
    main(
        ["fetch", "--sample", sample_id, "--api-key", KEY, "--endpoint", server.endpoint, "--debug"]
    )
    assert http.client.HTTPConnection.debuglevel == 0
    assert_no_key(*capfd.readouterr())


# -- the command line -------------------------------------------------------------------------
def _cli_has(*commands: str) -> bool:
    from atomscale_accessors import cli

    parser = cli.build_parser()
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(getattr(action, "choices", None), dict):
            found |= set(action.choices)
    return set(commands) <= found


needs_cli = pytest.mark.skipif(
    not _cli_has("upload", "fetch", "validate"),
    reason="the upload, fetch and validate subcommands do not exist yet",
)
CLI_MAPPING = [
    "--x", "x_mm", "--y", "y_mm", "--value", "thk",
    "--property-name", "thickness", "--property-unit", "nm", "--coord-units", "mm",
]  # fmt: skip


@needs_cli
@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.parametrize(
    "situation", ["success", "wrong-key", "server-error", "refused", "invalid-file", "debug"]
)
def test_cli_output_never_shows_the_key(situation, how, fresh, tmp_path, capfd, monkeypatch):
    from atomscale_accessors.cli import main

    server, sample_id = fresh
    csv = tmp_path / "points.csv"
    points(6).to_csv(csv, index=False)
    key = WRONG_KEY if situation == "wrong-key" else KEY
    endpoint = server.endpoint
    if situation == "refused":
        endpoint = f"http://127.0.0.1:{closed_port()}/"
    if situation == "invalid-file":
        csv.write_text("x_mm,y_mm,thk\n0,0,abc\n")
    if situation == "server-error":
        # A status that is not retried keeps the test quick; the 5xx paths are above.
        server.inject("error_before_commit", status=400, route="bulk_create", times=100)
    monkeypatch.delenv("ATOMSCALE_API_KEY", raising=False)
    connection: list[str] = []
    if how == "option":
        monkeypatch.delenv("AS_API_KEY", raising=False)
        connection = ["--api-key", key, "--endpoint", endpoint]
    else:
        monkeypatch.setenv("AS_API_KEY", key)
        monkeypatch.setenv("AS_API_ENDPOINT", endpoint)
    debug = ["--debug"] if situation in ("debug", "server-error", "refused") else []
    upload = ["upload", str(csv), "--sample", sample_id, "--no-progress", *CLI_MAPPING]
    statuses = [] if situation == "refused" else [main([*upload, *connection, *debug])]
    # (an upload retries a refused connection for seconds: fetch shows that failure)
    once = ["--max-attempts", "1"] if situation == "refused" else []
    statuses.append(main(["fetch", "--sample", sample_id, *connection, *once, *debug]))
    statuses.append(main(["validate", str(csv), *CLI_MAPPING, *debug]))
    out, err = capfd.readouterr()
    assert_no_key(out, err)
    if situation in ("success", "debug"):
        assert statuses == [0, 0, 0], (statuses, err)
    else:
        assert any(status != 0 for status in statuses) and "error:" in err


# -- transport ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "endpoint",
    [
        "http://api.atomscale.ai/",
        "http://10.1.2.3:8000/",
        "http://localhost.example.com/",
        "http://127.0.0.1.nip.io/",
        "http://0.0.0.0:8000/",
        "http://[fe80::1]/",
    ],
)
def test_no_key_over_plain_http_to_another_host(endpoint, monkeypatch):
    opened: list[Any] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: opened.append(a))
    with pytest.raises(ConfigurationError, match="plain http") as info:
        Client(api_key=KEY, endpoint=endpoint)
    assert_no_key(everything_about(info.value))
    # The same configuration from the environment, through the public functions.
    monkeypatch.setenv("AS_API_KEY", KEY)
    monkeypatch.setenv("AS_API_ENDPOINT", endpoint)
    with pytest.raises(ConfigurationError):
        fetch(str(uuid.uuid4()))
    with pytest.raises(ConfigurationError):
        points(2).atomscale.upload(str(uuid.uuid4()), **MAPPING)

    class SdkClient:  # the official SDK's client shape
        api_key = KEY

    SdkClient.endpoint = endpoint
    with pytest.raises(ConfigurationError):
        fetch(str(uuid.uuid4()), client=SdkClient())
    assert opened == [], "a connection was opened"
    # Allowed when asked for explicitly (and still nothing sent by constructing it).
    client = Client(api_key=KEY, endpoint=endpoint, allow_insecure=True)
    assert client.endpoint.startswith("http://")
    assert opened == []


@pytest.mark.parametrize(
    ("host", "bind"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("[::1]", "::1"),
        ("127.5.6.7", "127.5.6.7"),
    ],
)
def test_plain_http_to_loopback_is_allowed(host, bind):
    try:
        loopback = LocalServer(api_key=KEY, host=bind).start()
    except OSError as exc:
        pytest.skip(f"this machine cannot listen on {bind}: {exc}")
    try:
        sample_id = loopback.create_sample("over-loopback")
        client = Client(api_key=KEY, endpoint=f"http://{host}:{loopback.port}/", retry=FAST)
        assert client.endpoint.startswith(f"http://{host}:")
        # A real request over plain http reaches the server and is answered.
        assert client.list_annotations(sample_id) == []
        assert loopback.request_count("list_annotations") == 1
        assert (
            len(points(3).atomscale.upload(sample_id, client=client, progress_bar=False, **MAPPING))
            == 3
        )
        assert loopback.annotation_count(sample_id) == 3
    finally:
        loopback.close()
    # The same URL with a host that is not loopback is refused before anything is sent.
    for other in ("example.org", "10.1.2.3", "[fe80::1]", "127.0.0.1.example.org"):
        with pytest.raises(ConfigurationError, match="plain http"):
            Client(api_key=KEY, endpoint=f"http://{other}:{loopback.port}/")


def test_plain_http_never_goes_through_a_proxy(fresh, monkeypatch):
    # A proxy from the environment would receive the key in the clear.
    server, sample_id = fresh
    with _EchoServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
        monkeypatch.setenv("http_proxy", proxy.endpoint)
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.setenv("no_proxy", "")
        client = Client(api_key=KEY, endpoint=server.endpoint)
        assert len(fetch(sample_id, client=client)) == 0
        assert proxy.seen_keys == []


def test_redirects_are_not_followed_with_the_key():
    with _EchoServer() as target, _EchoServer() as redirector:
        redirector.mode = "redirect"
        redirector.location = f"{target.endpoint}physical_samples/"
        client = Client(api_key=KEY, endpoint=redirector.endpoint, retry=FAST)
        with pytest.raises(ApiError) as info:
            client.list_samples()
        assert info.value.status_code == 307
        assert target.seen_keys == []


def test_tls_verification_off_warns():
    with pytest.warns(UserWarning, match="verification is off"):
        client = Client(api_key=KEY, endpoint="https://api.atomscale.ai/", verify=False)
    assert client.session.verify is False


@pytest.mark.parametrize("verify", [True, "ca-bundle"])
def test_tls_verification_on_is_silent_and_reaches_the_session(verify, tmp_path):
    value = str(tmp_path / "ca.pem") if verify == "ca-bundle" else verify
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = Client(api_key=KEY, endpoint="https://api.atomscale.ai/", verify=value)
    assert client.session.verify == value


@pytest.mark.parametrize("verify", [None, 0, ""], ids=["None", "zero", "empty-string"])
def test_falsy_verify_never_switches_tls_verification_off_silently(verify):
    # requests reads any false value as "do not verify": that must not happen unannounced.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            client = Client(api_key=KEY, endpoint="https://api.atomscale.ai/", verify=verify)
        except (ConfigurationError, TypeError, ValueError):
            return  # refused outright: fine
    warned = any("verif" in str(w.message) for w in caught)
    assert client.session.verify or warned, (
        f"verify={verify!r} switches TLS verification off without a warning"
    )


def test_tls_verification_survives_an_empty_ca_bundle_variable(monkeypatch):
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    client = Client(api_key=KEY, endpoint="https://api.atomscale.ai/")
    settings = client.session.merge_environment_settings(
        "https://api.atomscale.ai/", {}, None, None, None
    )
    assert settings["verify"] is True


# -- ids are checked before they are put into a URL ----------------------------------------
BAD_IDS = [
    "../../physical_samples",
    "..%2f..%2fphysical_samples",
    "%2e%2e",
    f"{uuid.UUID(int=1)}/../x",
    f"{uuid.UUID(int=1)}?x=1",
    f"{uuid.UUID(int=1)}#x",
    f"{uuid.UUID(int=1)}%00",
    pytest.param(f"{uuid.UUID(int=1)}\n", id="trailing-newline"),
    "",
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=lambda b: repr(b)[1:-1] or "empty")
def test_ids_are_uuids_before_any_request(bad, fresh):
    server, sample_id = fresh
    client = Client(api_key=KEY, endpoint=server.endpoint, retry=FAST)
    calls = {
        "list_annotations": lambda: client.list_annotations(bad),
        "create_annotation": lambda: client.create_annotation(
            bad, {"property_name": "t", "property_value": 1.0}
        ),
        "create_annotations": lambda: client.create_annotations(bad, []),
        "update_annotation (sample)": lambda: client.update_annotation(
            bad, str(uuid.uuid4()), {"property_value": 1.0}
        ),
        "update_annotation (annotation)": lambda: client.update_annotation(
            sample_id, bad, {"property_value": 1.0}
        ),
        "list_samples": lambda: client.list_samples(bad),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidIdentifierError):
            call()
        assert server.request_count() == 0, f"{name} sent a request: {server.request_counts}"
    # fetch takes a name too: such text is looked up among the samples, never put in a URL.
    expected = InvalidIdentifierError if not bad.strip() else SampleNotFoundError
    with pytest.raises(expected):
        fetch(bad, client=client)
    sent = {route for route, n in server.request_counts.items() if n}
    assert sent <= {"list_samples", "get_sample"}, f"fetch sent: {sent}"


# -- the local server -------------------------------------------------------------------------
def _listening_addresses(port: int) -> list[str]:
    addresses = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            host, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(host)
            if family == socket.AF_INET:
                addresses.append(socket.inet_ntop(family, raw[::-1]))
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                addresses.append(socket.inet_ntop(family, words))
    return addresses


def test_local_server_binds_to_loopback_by_default():
    with LocalServer() as srv:
        assert srv.host == "127.0.0.1"
        assert srv.endpoint.startswith("http://127.0.0.1:")
        if not Path("/proc/net/tcp").exists():
            pytest.skip("no /proc/net/tcp to read the listening address from")
        assert _listening_addresses(srv.port) == ["127.0.0.1"]


def test_local_server_requires_a_key(fresh):
    server, sample_id = fresh
    url = f"{server.endpoint}physical_samples/{sample_id}/annotations/"
    answers = {
        "missing": requests.get(url, timeout=10),
        "wrong": requests.get(url, headers={"X-API-KEY": WRONG_KEY}, timeout=10),
        "empty": requests.get(url, headers={"X-API-KEY": ""}, timeout=10),
        "prefix": requests.get(url, headers={"X-API-KEY": KEY[:-1]}, timeout=10),
        "bearer": requests.get(url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10),
    }
    for name, answer in answers.items():
        assert answer.status_code == 401, name
        assert_no_key(answer.text)
    bulk = requests.post(
        url + "bulk",
        json={"annotations": [{"property_name": "t", "property_value": 1.0}]},
        headers={"X-API-KEY": WRONG_KEY},
        timeout=10,
    )
    assert bulk.status_code == 401
    assert server.annotation_count(sample_id) == 0
    assert requests.get(url, headers={"X-API-KEY": KEY}, timeout=10).status_code == 200


def test_local_server_makes_up_a_strong_key_when_none_is_given():
    keys = {LocalServer().api_key, LocalServer(api_key="").api_key, LocalServer().api_key}
    assert len(keys) == 3
    assert all(len(k) >= 32 for k in keys)
    with pytest.raises(ValueError, match="requires an API key"):
        create_app(Store(None), "")


def _raw_request(server: LocalServer, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request over a raw socket; return the status and the answer's bytes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        status_line = answer.split(b"\r\n", 1)[0]
        return int(status_line.split()[1]), answer


def test_over_limit_body_refused_from_content_length_before_reading(fresh):
    server, sample_id = fresh
    path = f"/physical_samples/{sample_id}/annotations/bulk"
    # Announce 1 GB, send none of it: the answer must come without the body.
    status, answer = _raw_request(
        server,
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
    )
    assert status == 413
    assert b"too large" in answer.lower()
    assert server.request_count("bulk_create") == 1
    assert server.annotation_count(sample_id) == 0


def test_over_limit_body_without_content_length_is_refused_while_reading(fresh):
    server, sample_id = fresh
    server.set_limits(max_body_bytes=2000)
    path = f"/physical_samples/{sample_id}/annotations/bulk"
    body = json.dumps(
        {
            "annotations": [
                {"property_name": "t" * 50, "property_value": float(i)} for i in range(60)
            ]
        }
    ).encode()
    assert len(body) > 2000
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:1500], body[1500:])) + b"0\r\n\r\n"
    )
    status, _ = _raw_request(
        server,
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: {KEY}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunked,
    )
    assert status == 413
    assert server.annotation_count(sample_id) == 0


HOSTILE = [
    "'); DROP TABLE annotations;--",
    '" OR 1=1 --',
    "Robert'); DELETE FROM physical_samples WHERE ('1'='1",
    "back\\slash and \"quotes\" and 'apostrophes'",
    "%_ LIKE wildcards _%",
    "résumé 膜厚 толщина \u202eRTL\u202c e\u0301 🧪",
    "tab\tnew\nline\rreturn",
    "<script>alert(1)</script>",
    "${jndi:ldap://127.0.0.1/x}",
    "nul\x00inside",
]


def test_hostile_strings_are_stored_literally(fresh):
    server, sample_id = fresh
    client = Client(api_key=KEY, endpoint=server.endpoint, retry=FAST)
    n = len(HOSTILE)
    df = pd.DataFrame(
        {
            "x_mm": np.arange(n, dtype=float),
            "y_mm": np.zeros(n),
            "thk": np.linspace(1.0, 2.0, n),
            "prop": HOSTILE,
            "tech": HOSTILE[::-1],
            "note": HOSTILE,
        }
    )
    created = df.atomscale.upload(
        sample_id,
        client=client,
        x="x_mm",
        y="y_mm",
        value="thk",
        property_name="prop",
        property_unit="nm",
        coord_units="mm",
        char_source_type="tech",
        metadata=["note"],
        progress_bar=False,
    )
    assert len(created) == n
    stored = fetch(sample_id, client=client).sort_values("coord_x").reset_index(drop=True)
    assert stored["property_name"].astype(object).tolist() == HOSTILE
    assert stored["char_source_type"].astype(object).tolist() == HOSTILE[::-1]
    assert [m["note"] for m in stored["metadata"]] == HOSTILE
    # The store is intact and filters match literally, not as patterns.
    assert server.annotation_count(sample_id) == n
    assert len(client.list_samples()) >= 1
    for text in HOSTILE:
        found = fetch(sample_id, client=client, property_name=text)
        assert found["property_name"].astype(object).tolist() == [text]
    assert len(fetch(sample_id, client=client, property_name="%")) == 0
    assert len(fetch(sample_id, client=client, char_source_type="_%")) == 0


# -- a tiny misbehaving HTTP server for the echo, proxy and redirect cases --------------------
class _EchoServer:
    """A loopback HTTP server that records the keys it is sent and answers as told."""

    def __init__(self) -> None:
        self.mode = "string"
        self.location = ""
        self.seen_keys: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                key = self.headers.get("X-API-KEY")
                if key is not None:
                    owner.seen_keys.append(key)
                if owner.mode == "redirect":
                    self.send_response(307)
                    self.send_header("Location", owner.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body, kind = 500, b"", "application/json"
                if owner.mode == "string":
                    body = json.dumps({"detail": f"key {key} is not valid here"}).encode()
                elif owner.mode == "list":
                    body = json.dumps(
                        {"detail": [{"loc": ["header"], "msg": "bad", "input": key}]}
                    ).encode()
                elif owner.mode == "text":
                    body, kind = f"<html>upstream said {key}</html>".encode(), "text/html"
                elif owner.mode == "ok-not-json":
                    status, body, kind = 200, f"not json {key}".encode(), "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _answer

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def __enter__(self) -> _EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)
