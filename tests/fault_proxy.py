"""A fault-injecting HTTP proxy for tests: :class:`FaultProxy`.

It sits between a client and an upstream server (the package's ``LocalServer``) on
loopback and misbehaves on request, in the ways a network, a gateway or a broken server
does: connections cut before or after the server committed, late answers, answers that
arrive a byte at a time, rewritten or stale answers, and answers made up on the spot.

Each client request is read whole (request line, headers, a ``Content-Length`` or chunked
body), offered to the queued faults, and, unless the fault says otherwise, forwarded to
the upstream over a connection of its own; the upstream's answer is read whole
(``Content-Length``, chunked or until closed) and sent back with a ``Content-Length``.
Client connections are kept alive, so a ``requests`` session reuses them as it would with
a real server.

Examples
--------
>>> import requests
>>> from atomscale_accessors.server import LocalServer
>>> with LocalServer() as server, FaultProxy(server.endpoint) as proxy:
...     proxy.add("answer", path="physical_samples", status=503, body=b"busy")
...     url, headers = proxy.endpoint + "physical_samples/", {"X-API-KEY": server.api_key}
...     first = requests.get(url, headers=headers, timeout=10)
...     second = requests.get(url, headers=headers, timeout=10)
>>> first.status_code, first.text, second.status_code
(503, 'busy', 200)
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import threading
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = ["FAULTS", "FaultProxy"]

FAULTS = (
    "cut_before",
    "cut_after",
    "delay",
    "trickle",
    "rewrite",
    "rewrite_request",
    "replay",
    "answer",
)
"""The kinds of fault :meth:`FaultProxy.add` accepts."""

# option name -> required; anything else given to add() is a mistake in the test
_OPTIONS: dict[str, dict[str, bool]] = {
    "cut_before": {},
    "cut_after": {},
    "delay": {"seconds": True},
    "trickle": {"chunk": False, "interval": False, "limit": False},
    "rewrite": {"fn": True, "status": False},
    "rewrite_request": {"fn": True},
    "replay": {},
    "answer": {"status": False, "body": False, "headers": False},
}
# Headers that describe one hop, not the message: never passed on.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_MAX_HEAD = 1 << 20
_UPSTREAM_TIMEOUT = 60.0
_JOIN_TIMEOUT = 5.0


class _ProtocolError(Exception):
    """A peer closed early or sent something that is not HTTP/1.1."""


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in _header(self.headers, "connection").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass
class _Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def encode(self, *, keep_alive: bool, padding: int = 0) -> bytes:
        """The answer as sent to the client; ``padding`` blanks are added to the body
        (harmless after JSON) so a trickle can be made to last."""
        body = self.body + b" " * padding
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in _HOP_BY_HOP]
        lines.append(f"Content-Length: {len(body)}")
        lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class _Fault:
    kind: str
    method: str | None
    path: re.Pattern[str] | None
    times: int
    options: dict[str, Any]
    # replay: the first answer seen per method, replayed to the later requests
    remembered: dict[str, _Answer] = field(default_factory=dict)

    def matches(self, request: _Request) -> bool:
        if self.method is not None and request.method != self.method:
            return False
        return self.path is None or self.path.search(request.path) is not None


def _header(headers: list[tuple[str, str]], name: str) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value
    return ""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Reader:
    """Buffered reading of HTTP/1.1 messages from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def _until(self, marker: bytes, limit: int) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise _ProtocolError("header section too long")
            if not self._fill():
                raise _ProtocolError("closed in the middle of a message")
        data = bytes(self.buffer[: end + len(marker)])
        del self.buffer[: end + len(marker)]
        return data

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise _ProtocolError("closed in the middle of a body")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def _rest(self) -> bytes:
        while self._fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def _head(self) -> tuple[str, list[tuple[str, str]]]:
        lines = self._until(b"\r\n\r\n", _MAX_HEAD).decode("latin-1").split("\r\n")
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        return lines[0], headers

    def _body(self, headers: list[tuple[str, str]], *, until_close: bool) -> bytes:
        if "chunked" in _header(headers, "transfer-encoding").lower():
            parts = []
            while True:
                size = int(self._until(b"\r\n", 1024).split(b";")[0].strip(), 16)
                if size == 0:
                    while self._until(b"\r\n", _MAX_HEAD) != b"\r\n":  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self._exactly(size))
                self._exactly(2)
        length = _header(headers, "content-length")
        if length:
            return self._exactly(int(length))
        return self._rest() if until_close else b""

    def request(self) -> _Request | None:
        """The next request, or ``None`` when the client closed between requests."""
        if not self.buffer and not self._fill():
            return None
        line, headers = self._head()
        try:
            method, target, version = line.split(" ", 2)
        except ValueError:
            raise _ProtocolError(f"not a request line: {line!r}") from None
        return _Request(method, target, version, headers, self._body(headers, until_close=False))

    def answer(self, method: str) -> _Answer:
        while True:
            line, headers = self._head()
            parts = line.split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise _ProtocolError(f"not a status line: {line!r}")
            status = int(parts[1])
            if status >= 200 or status == 101:
                break  # 1xx interim answers are skipped
        reason = parts[2] if len(parts) > 2 else _reason(status)
        if method == "HEAD" or status in (204, 304):
            return _Answer(status, reason, headers, b"")
        return _Answer(status, reason, headers, self._body(headers, until_close=True))


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 that applies queued faults to requests.

    Parameters
    ----------
    upstream : str
        Base URL of the server behind the proxy, e.g. ``"http://127.0.0.1:8000/"``.

    Attributes
    ----------
    endpoint : str
        Base URL of the proxy, with the upstream's path prefix:
        ``"http://127.0.0.1:PORT/"``. Known as soon as the proxy is made.
    requests : list of (str, str)
        ``(method, path)`` of every request the proxy read, in order (the path without
        its query string), whatever happened to it.
    targets : list of (str, str)
        The same, with the query string.

    Notes
    -----
    Every thread is a daemon thread; :meth:`close` closes every socket and ends them.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the upstream must be an http:// URL, got {upstream!r}")
        self._upstream = (parts.hostname, parts.port or 80)
        self._upstream_host = parts.netloc
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}{parts.path or '/'}"
        self.requests: list[tuple[str, str]] = []
        self.connections = 0  # connections accepted from clients
        self.targets: list[tuple[str, str]] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._acceptor: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed.is_set() else "open"
        return f"<FaultProxy {state} {self.endpoint} -> {self._upstream_host}>"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Accept connections in a background thread (a second call does nothing)."""
        if self._closed.is_set():
            raise RuntimeError("the proxy is closed")
        with self._lock:
            if self._acceptor is None:
                self._acceptor = threading.Thread(
                    target=self._accept, name=f"fault-proxy-{self.port}", daemon=True
                )
                self._acceptor.start()
        return self

    def close(self) -> None:
        """Stop accepting, close every connection, and wait for the threads to end."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._acceptor is not None:
            self._acceptor.join(_JOIN_TIMEOUT)
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            _shut(sock)
        for thread in threads:
            thread.join(_JOIN_TIMEOUT)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------
    def add(
        self,
        fault: str,
        *,
        method: str | None = None,
        path: str | None = None,
        times: int = 1,
        **options: Any,
    ) -> None:
        """Queue a fault for the next ``times`` requests it matches.

        Parameters
        ----------
        fault : str
            What to do to a matching request:

            - ``"cut_before"``: close the client connection without forwarding (the
              request never reaches the server).
            - ``"cut_after"``: forward, let the server answer (it committed), then close
              the client connection without answering.
            - ``"delay"``: forward, then wait ``seconds`` before answering.
            - ``"trickle"``: forward, then send the answer (status line and headers
              included) ``chunk`` bytes (default 1) every ``interval`` seconds (default
              0.1). With ``limit`` (seconds), the body is padded with blanks so that the
              trickle lasts at least that long. It stops as soon as the client goes away.
            - ``"rewrite"``: forward, then replace the answer's body by ``fn(body)``
              (``Content-Length`` follows) and its status by ``status`` when given.
            - ``"rewrite_request"``: replace the request's body by ``fn(body)``
              (``Content-Length`` follows), then forward it: the server stores
              something other than what the client sent, as a server that rounds
              values would.
            - ``"replay"``: answer with the status and body of the first answer this
              fault saw for the same method, without forwarding: a stale answer. The
              first matching request of each method is forwarded and remembered; that
              one does not count towards ``times``.
            - ``"answer"``: do not forward; answer ``status`` (default 200) with ``body``
              (bytes or text, default empty) and ``headers`` (a dict; the content type
              defaults to ``text/plain``).
        method : str, optional
            Only requests with this method (exact, e.g. ``"POST"``).
        path : str, optional
            A regular expression searched in the request path (without the query).
        times : int, default 1
            How many matching requests the fault applies to.
        **options
            The fault's options, as listed above.

        Notes
        -----
        Each request gets at most one fault: the first queued one that matches.
        """
        if fault not in _OPTIONS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        allowed = _OPTIONS[fault]
        unknown = set(options) - set(allowed)
        if unknown:
            raise TypeError(f"fault {fault!r} takes no option {', '.join(sorted(unknown))}")
        missing = [name for name, required in allowed.items() if required and name not in options]
        if missing:
            raise TypeError(f"fault {fault!r} needs {', '.join(missing)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        if fault == "answer":
            body = options.get("body", b"")
            options["body"] = body.encode() if isinstance(body, str) else bytes(body)
        pattern = None if path is None else re.compile(path)
        with self._lock:
            self._faults.append(_Fault(fault, method, pattern, times, dict(options)))

    def clear(self) -> None:
        """Remove the queued faults and forget the requests seen."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
            self.targets.clear()

    def _take(self, request: _Request) -> tuple[_Fault | None, _Answer | None]:
        """The fault for ``request`` (spending one of its times), and for a replay the
        answer to replay (``None`` when there is none yet: forward and remember)."""
        with self._lock:
            self.requests.append((request.method, request.path))
            self.targets.append((request.method, request.target))
            for fault in self._faults:
                if not fault.matches(request):
                    continue
                stale = fault.remembered.get(request.method)
                if fault.kind == "replay" and stale is None:
                    return fault, None
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
                return fault, stale
        return None, None

    # -- serving ---------------------------------------------------------------------------
    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in selector.select():
                    if key.fileobj is not self._listener or self._closed.is_set():
                        continue
                    try:
                        client, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    client.setblocking(True)
                    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    thread = threading.Thread(
                        target=self._serve,
                        args=(client,),
                        name=f"fault-proxy-{self.port}-connection",
                        daemon=True,
                    )
                    with self._lock:
                        self.connections += 1
                        self._sockets.add(client)
                        # ended threads are dropped here, not by themselves: close() must
                        # be able to wait for a thread until its very last line
                        self._threads = {t for t in self._threads if t.is_alive()}
                        self._threads.add(thread)
                    thread.start()

    def _serve(self, client: socket.socket) -> None:
        reader = _Reader(client)
        try:
            while not self._closed.is_set():
                request = reader.request()
                if request is None:
                    return
                fault, stale = self._take(request)
                if not self._handle(client, request, fault, stale):
                    return
                if not request.keep_alive:
                    return
        except (OSError, _ProtocolError, ValueError):
            return  # the client went away or spoke nonsense: drop the connection
        finally:
            with self._lock:
                self._sockets.discard(client)
            _shut(client)

    def _handle(
        self, client: socket.socket, request: _Request, fault: _Fault | None, stale: _Answer | None
    ) -> bool:
        """Answer one request; return whether the connection stays usable."""
        kind = fault.kind if fault is not None else None
        options = fault.options if fault is not None else {}
        keep = request.keep_alive
        if kind == "cut_before":
            return False
        if kind == "answer":
            headers = {"Content-Type": "text/plain; charset=utf-8", **options.get("headers", {})}
            status = int(options.get("status", 200))
            answer = _Answer(status, _reason(status), list(headers.items()), options["body"])
            return _send(client, answer.encode(keep_alive=keep))
        if kind == "replay" and stale is not None:
            return _send(client, stale.encode(keep_alive=keep))
        if kind == "rewrite_request":
            request = replace(request, body=options["fn"](request.body))
        forwarded = self._forward(request)
        if forwarded is None or kind == "cut_after":
            return False  # the upstream dropped the connection, or the fault says to
        if kind == "replay" and fault is not None:
            with self._lock:
                fault.remembered.setdefault(request.method, forwarded)
        if kind == "delay" and self._closed.wait(float(options["seconds"])):
            return False  # closed while waiting
        if kind == "rewrite":
            status = int(options.get("status", forwarded.status))
            reason = forwarded.reason if status == forwarded.status else _reason(status)
            forwarded = _Answer(status, reason, forwarded.headers, options["fn"](forwarded.body))
        if kind == "trickle":
            return self._trickle(client, forwarded, keep, **options)
        return _send(client, forwarded.encode(keep_alive=keep))

    def _trickle(
        self,
        client: socket.socket,
        answer: _Answer,
        keep: bool,
        chunk: int = 1,
        interval: float = 0.1,
        limit: float | None = None,
    ) -> bool:
        chunk = max(1, int(chunk))
        padding = 0
        if limit is not None and interval > 0:
            plain = len(answer.encode(keep_alive=keep))
            padding = max(0, int(limit / interval + 1) * chunk - plain)
        data = answer.encode(keep_alive=keep, padding=padding)
        for start in range(0, len(data), chunk):
            if not _send(client, data[start : start + chunk]):
                return False  # the client went away: stop quietly
            if start + chunk < len(data) and self._closed.wait(interval):
                return False
        return True

    def _forward(self, request: _Request) -> _Answer | None:
        """The upstream's answer to ``request``; ``None`` when it dropped the connection,
        502 when it cannot be reached."""
        lines = [f"{request.method} {request.target} HTTP/1.1", f"Host: {self._upstream_host}"]
        lines += [
            f"{k}: {v}" for k, v in request.headers if k.lower() not in _HOP_BY_HOP | {"host"}
        ]
        if request.body or request.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(request.body)}")
        lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            upstream = socket.create_connection(self._upstream, timeout=_UPSTREAM_TIMEOUT)
        except OSError:
            body = b"the fault proxy could not reach the upstream server"
            return _Answer(502, "Bad Gateway", [("Content-Type", "text/plain")], body)
        with self._lock:
            self._sockets.add(upstream)
        try:
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.sendall(head + request.body)
            return _Reader(upstream).answer(request.method)
        except (OSError, _ProtocolError, ValueError):
            return None
        finally:
            with self._lock:
                self._sockets.discard(upstream)
            _shut(upstream)


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _shut(sock: socket.socket) -> None:
    # shutdown first: it wakes a thread blocked in recv on this socket, close alone may not
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
