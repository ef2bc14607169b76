"""Running the server: :class:`LocalServer` in a background thread, :func:`serve` blocking."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from .app import create_app
from .faults import _UNSET, Faults, Limits
from .store import Store

__all__ = ["LocalServer", "new_api_key", "serve"]

logger = logging.getLogger(__name__)

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def new_api_key() -> str:
    """A random key for a local server: 32 bytes, URL-safe base64, never starting with
    ``-`` (which a command line would read as an option: ``--api-key -x...`` fails)."""
    while (key := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return key


def _bind(host: str, port: int) -> socket.socket:
    """Bind a listening socket ourselves, so port 0 yields a port with no race."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only for
    # sockets made that way; without it every answer on a kept-alive connection waits
    # ~40 ms for the client's delayed acknowledgement.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # lets a restarted server take its old port back while old connections linger
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _uvicorn_config(
    app: Any, *, access_log: bool, quiet: bool, graceful_timeout: float
) -> uvicorn.Config:
    options: dict[str, Any] = {
        "lifespan": "off",
        "http": "h11",
        "ws": "none",
        "loop": "asyncio",
        "access_log": access_log,
        "timeout_graceful_shutdown": graceful_timeout,
    }
    if quiet:
        # keep the host process's logging configuration untouched (tests, notebooks)
        options.update(log_config=None, log_level="warning")
    return uvicorn.Config(app, **options)


class _BackgroundServer(uvicorn.Server):
    """A uvicorn server that notices a stop request within 10 ms instead of 100 ms.

    Tests start and stop a server each; uvicorn's 0.1 s polling would add up.
    """

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            # on_tick refreshes the Date header every 10th tick: now every 0.1 s
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)
            should_exit = await self.on_tick(counter)


class LocalServer:
    """The local Atomscale-compatible server, running in a background thread.

    Parameters
    ----------
    db_path : str, os.PathLike or None
        SQLite file (data survives a new ``LocalServer`` on the same file); ``None`` for
        an in-memory database that lives as long as this object (so data survives
        :meth:`stop` and :meth:`start`).
    api_key : str, optional
        The key clients must send in ``X-API-KEY``; a random one when omitted.
    host : str
        Interface to bind; loopback by default.
    port : int
        Port to bind; 0 picks a free one on the first start, kept on restarts.
    max_bulk_annotations : int or None
        Most annotations in one bulk request (413 beyond); ``None`` for no limit.
    max_body_bytes : int or None
        Largest request body (413 beyond); ``None`` for no limit.
    latency : float
        Seconds added to every request.
    rate_limit : float or None
        Requests per second before 429 with ``Retry-After``; ``None`` for no limit.
    access_log : bool
        Log one line per request through uvicorn's access logger (off: quiet tests).

    Examples
    --------
    >>> import requests
    >>> with LocalServer() as srv:
    ...     sid = srv.create_sample("wafer-1")
    ...     answer = requests.post(
    ...         f"{srv.endpoint}physical_samples/{sid}/annotations/bulk",
    ...         json={"annotations": [{"property_name": "thickness", "property_value": 12.5}]},
    ...         headers={"X-API-KEY": srv.api_key},
    ...         timeout=10,
    ...     )
    ...     answer.status_code, srv.annotation_count(sid)
    (200, 1)
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_bulk_annotations: int | None = 50_000,
        max_body_bytes: int | None = 64 * 2**20,
        latency: float = 0.0,
        rate_limit: float | None = None,
        access_log: bool = False,
    ) -> None:
        self._api_key = api_key if api_key else new_api_key()
        self.db_path = None if db_path is None else Path(db_path)
        self.host = host
        self._port = int(port)
        self._access_log = access_log
        self.faults = Faults(latency=latency, rate_limit=rate_limit)
        self.limits = Limits(max_bulk_annotations, max_body_bytes)
        self._store: Store | None = None
        self._app: Any = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        state = "running" if self.running else "stopped"
        where = "memory" if self.db_path is None else str(self.db_path)
        return f"<LocalServer {state} on {self.host}:{self._port} db={where}>"

    # -- properties ----------------------------------------------------------------------

    @property
    def api_key(self) -> str:
        """The key clients must send in ``X-API-KEY``."""
        return self._api_key

    @property
    def port(self) -> int:
        """The bound port (0 before the first start when none was asked for)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """Base URL, ending in ``/``, e.g. ``"http://127.0.0.1:54321/"``."""
        if self._port == 0:
            raise RuntimeError("the server has not been started yet, so it has no port")
        return f"http://{_url_host(self.host)}:{self._port}/"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def store(self) -> Store:
        """The SQLite store (opened on first use)."""
        if self._store is None or self._store.closed:
            self._store = Store(self.db_path)
        return self._store

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Serve in a background thread; return once the server accepts requests.

        Restarting after :meth:`stop` binds the same port and serves the same data.

        Returns
        -------
        LocalServer
            The server itself, so that ``server = LocalServer().start()`` works.
        """
        with self._lock:
            if self.running:
                return self
            store = self.store
            if self._app is None or self._app.state.store is not store:
                self._app = create_app(store, self._api_key, self.faults, self.limits)
            sock = _bind(self.host, self._port)
            self._port = sock.getsockname()[1]
            config = _uvicorn_config(
                self._app,
                access_log=self._access_log,
                quiet=True,
                graceful_timeout=2.0,
            )
            server = _BackgroundServer(config)
            self._app.state.uvicorn_server = server
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [sock]},
                name=f"atomscale-local-server-{self._port}",
                daemon=True,
            )
            self._sock, self._server, self._thread = sock, server, thread
            thread.start()
            deadline = time.monotonic() + _START_TIMEOUT
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    self._halt()
                    raise RuntimeError("the local server failed to start")
                time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end; the data stays."""
        with self._lock:
            self._halt()

    def _halt(self) -> None:
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(_STOP_TIMEOUT)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(_STOP_TIMEOUT)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Stop and close the database (an in-memory one is gone after this)."""
        self.stop()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self.db_path is not None and self._store is not None:
            # a file is closed so that another LocalServer sees it checkpointed; memory
            # stays readable (annotation_count after the block) until close()
            self._store.close()

    # -- data, bypassing HTTP ----------------------------------------------------------------

    def create_sample(self, name: str) -> str:
        """Create a physical sample directly in the store (not counted as a request).

        Returns
        -------
        str
            The sample's UUID.
        """
        return self.store.create_sample(name)["id"]

    def create_project(self, name: str) -> str:
        """Create a project directly in the store (not counted as a request).

        The service documents no route that creates a project: this is how tests and
        demos get one. Samples join it through
        ``POST /projects/{project_id}/configuration/tracking_samples``.

        Returns
        -------
        str
            The project's UUID.

        Raises
        ------
        ValueError
            A project with exactly that name exists.
        """
        return self.store.create_project(name)["id"]

    def annotation_count(self, sample_id: str | None = None) -> int:
        """Annotations stored for a sample (all samples when ``None``), read from SQLite."""
        return self.store.annotation_count(None if sample_id is None else str(sample_id))

    def stored_annotations(self, sample_id: str) -> list[dict[str, Any]]:
        """A sample's annotations as the API answers them, read from SQLite."""
        return self.store.stored_annotations(str(sample_id))

    # -- faults and limits -----------------------------------------------------------------

    def inject(self, kind: str, **options: Any) -> None:
        """Queue a fault; see :meth:`.faults.Faults.inject` for the kinds and options."""
        self.faults.inject(kind, **options)

    def set_latency(self, seconds: float) -> None:
        """Add ``seconds`` to every request (0 to stop)."""
        self.faults.set_latency(seconds)

    def set_rate_limit(self, per_second: float | None, burst: float | None = None) -> None:
        """Answer 429 beyond ``per_second`` requests per second; ``None`` lifts the limit."""
        self.faults.set_rate_limit(per_second, burst)

    def set_limits(self, max_bulk_annotations: Any = _UNSET, max_body_bytes: Any = _UNSET) -> None:
        """Change the request size limits given; ``None`` lifts one, omitted ones stay."""
        self.limits.update(max_bulk_annotations, max_body_bytes)

    def clear_faults(self) -> None:
        """Remove queued faults, the latency and the rate limit (size limits stay)."""
        self.faults.clear()

    # -- counters ----------------------------------------------------------------------

    @property
    def request_counts(self) -> dict[str, int]:
        """Requests received per route name (every request, rejected or faulted too)."""
        return self.faults.request_counts

    def request_count(self, route: str | None = None) -> int:
        """Requests received on ``route``, or on all routes when ``None``."""
        return self.faults.request_count(route)

    def reset_counters(self) -> None:
        """Set the request counters back to zero."""
        self.faults.reset_counters()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    db_path: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    *,
    access_log: bool = True,
    max_bulk_annotations: int | None = 50_000,
    max_body_bytes: int | None = 64 * 2**20,
    on_ready: Callable[[str, str, bool], None] | None = None,
) -> None:
    """Run the server in the foreground until interrupted (Ctrl+C or SIGTERM).

    Parameters
    ----------
    host, port : str, int
        Where to listen; port 0 picks a free one.
    db_path : str, os.PathLike or None
        SQLite file, or ``None`` for an in-memory database (gone at exit).
    api_key : str, optional
        Required key; a random one when omitted.
    access_log : bool
        One log line per request (paths and statuses only, never headers).
    max_bulk_annotations, max_body_bytes : int or None
        Request size limits (413 beyond); ``None`` for no limit.
    on_ready : callable, optional
        Called as ``on_ready(endpoint, api_key, generated)`` once the socket is bound and
        before serving; the command line prints the endpoint (and a generated key) here.
    """
    generated = not api_key
    key = new_api_key() if generated else str(api_key)
    if not _is_loopback(host):
        print(
            f"warning: listening on {host}, not a loopback address; the server is plain"
            " http and reachable from other machines",
            file=sys.stderr,
        )
    store = Store(db_path)
    app = create_app(store, key, Faults(), Limits(max_bulk_annotations, max_body_bytes))
    sock = _bind(host, port)
    try:
        endpoint = f"http://{_url_host(host)}:{sock.getsockname()[1]}/"
        if on_ready is not None:
            on_ready(endpoint, key, generated)
        config = _uvicorn_config(app, access_log=access_log, quiet=False, graceful_timeout=5.0)
        server = uvicorn.Server(config)
        app.state.uvicorn_server = server
        server.run(sockets=[sock])
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        store.close()
