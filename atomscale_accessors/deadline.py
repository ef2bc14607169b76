"""A total deadline for each request: connecting, sending the body and reading the whole
answer.

requests' read timeout bounds each socket read, so an answer arriving a few bytes at a
time holds a request for as long as the bytes keep coming. Each request therefore gets a
deadline; one watchdog thread shuts the socket of a request that outlives it, which wakes
the request's thread whatever it is blocked in (sending, the headers, the body). The
client mounts :class:`DeadlineAdapter` on its session and brackets each request with
``WATCHDOG.begin`` and ``WATCHDOG.end``.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection

__all__ = ["BODY_PIECE", "WATCHDOG", "DeadlineAdapter"]


class _Deadline:
    """The end of one request's time, and the connection it runs on."""

    __slots__ = ("at", "connection", "expired", "finished")

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.connection: Any = None
        self.expired = False
        self.finished = False


class _Watchdog:
    """One daemon thread cutting the connections of requests past their deadline."""

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._current = threading.local()
        self._tidy_at = 256

    def begin(self, seconds: float | None) -> _Deadline | None:
        """Start the deadline of the request the calling thread is about to make."""
        if seconds is None:
            return None
        deadline = _Deadline(seconds)
        with self._lock:
            heap = self._heap
            if len(heap) >= self._tidy_at:
                # Finished requests leave their entries behind until they fall due.
                heap[:] = [entry for entry in heap if not entry[2].finished]
                heapq.heapify(heap)
                self._tidy_at = max(256, 2 * len(heap))
            heapq.heappush(heap, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="atomscale-accessors-deadlines", daemon=True
                )
                self._thread.start()
            elif heap[0][2] is deadline:
                self._lock.notify()
        self._current.deadline = deadline
        return deadline

    def end(self, deadline: _Deadline | None) -> bool:
        """Close the calling thread's deadline; return whether it had passed."""
        if deadline is None:
            return False
        self._current.deadline = None
        with self._lock:
            deadline.finished = True
            deadline.connection = None
            return deadline.expired

    def remaining(self) -> float | None:
        """Seconds left to the calling thread's request (0 once passed); None without a
        deadline. The transport's retries of a request end with it."""
        deadline = getattr(self._current, "deadline", None)
        if deadline is None:
            return None
        return 0.0 if deadline.expired else max(0.0, deadline.at - time.monotonic())

    def attach(self, connection: Any) -> None:
        """Put ``connection`` under the deadline of the calling thread's request."""
        deadline = getattr(self._current, "deadline", None)
        if deadline is None:
            return
        with self._lock:
            deadline.connection = connection
            if deadline.expired:
                raise TimeoutError("the request's deadline has passed")

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    deadline = heapq.heappop(self._heap)[2]
                    if not deadline.finished:
                        deadline.expired = True
                        _shut_socket(deadline.connection)
                # a new earliest deadline wakes the wait early (see begin)
                self._lock.wait(self._heap[0][0] - now if self._heap else None)

    def _after_fork(self) -> None:
        # The thread does not survive a fork, and the lock may have been held by it.
        self._lock = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None
        self._tidy_at = 256


def _shut_socket(connection: Any) -> None:
    """Shut down the socket of a connection in use by another thread."""
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        # socket.socket's shutdown even for a TLS socket: the SSLSocket method would
        # also drop its TLS state under the feet of the thread reading it.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._after_fork)


#: Bytes of a request body sent at a time; each piece must leave within the connect
#: timeout (256 kB: 1.4 s at 1.5 Mbit/s). urllib3's 16 kB meant 500 sends per 8 MiB chunk.
BODY_PIECE = 256 * 1024


class _Cuttable:
    """What makes a urllib3 connection one the deadline of the request using it can cut:
    it registers with the watchdog, and sends bodies in :data:`BODY_PIECE` pieces."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Always: urllib3's PoolManager passes its own 16 kB default to every connection.
        kwargs["blocksize"] = BODY_PIECE
        super().__init__(*args, **kwargs)

    # A mixin: mypy checks its super() calls against object, not against the urllib3
    # connection classes it is mixed into (the ignores below).
    def connect(self) -> None:
        WATCHDOG.attach(self)
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        WATCHDOG.attach(self)  # also a kept-alive connection, which connects no more
        _send_timeout(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Cuttable, urllib3.connection.HTTPConnection):
    """A connection that the deadline of the request using it can cut."""


class _HTTPSConnection(_Cuttable, urllib3.connection.HTTPSConnection):
    """:class:`_HTTPConnection` over TLS."""


def _send_timeout(connection: urllib3.connection.HTTPConnection) -> None:
    # urllib3 sends on a new connection under the connect timeout, but on a kept-alive
    # one under the read timeout the previous answer left on the socket: one rule, the
    # connect timeout (already the connection's timeout at this point), for both.
    if connection.sock is not None:
        connection.sock.settimeout(connection.timeout)


class _HTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOL_CLASSES = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, making connections that a request's deadline can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # not SOCKS, which has its own pools
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
