"""A client's requests sessions, and how a request goes out through one.

The client prepares its requests itself and sends them through the session's adapter
(its pools, the deadline, the transport retries): requests' own preparation, with the
redirect, hook and netrc machinery this client never uses, costs about as much CPU as
urllib3's whole exchange with the server, a share that shows in lots of small uploads.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

import requests
from requests.structures import CaseInsensitiveDict

__all__ = ["Sessions", "prepare", "send"]


def prepare(
    session: requests.Session,
    method: str,
    url: str,
    data: bytes | None,
    params: Mapping[str, Any] | None,
) -> requests.PreparedRequest:
    """The request as requests' session would prepare it for this client: its headers and
    cookies, the query (``None`` values left out), a JSON body given as a file."""
    prepared = requests.PreparedRequest()
    prepared.method = method
    query = [(key, value) for key, value in (params or {}).items() if value is not None]
    prepared.url = f"{url}?{urlencode(query, doseq=True)}" if query else url
    headers: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(session.headers)
    if data is not None:
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(data))
        # urllib3 sends bytes with one sendall(), which must end within the socket
        # timeout: megabytes on a slow uplink would time out while still moving. A file
        # goes out in pieces (deadline.BODY_PIECE), each of which must leave in time.
        prepared.body = io.BytesIO(data)
    elif method not in ("GET", "HEAD"):
        headers["Content-Length"] = "0"
    prepared.headers = headers
    if session.cookies:  # what a load balancer set, say, as the session would send it
        prepared.prepare_cookies(session.cookies)
    return prepared


def send(
    session: requests.Session, prepared: requests.PreparedRequest, timeout: tuple[float, float]
) -> requests.Response:
    """Send through the session's adapter (its pools, deadline and transport retries),
    with the settings the environment gives the session (proxies, CA bundle); no
    redirects. The body is read whole."""
    assert prepared.url is not None
    settings = session.merge_environment_settings(prepared.url, {}, True, None, None)
    response = session.get_adapter(prepared.url).send(
        prepared,
        stream=True,
        timeout=timeout,
        verify=settings["verify"],
        cert=settings["cert"],
        proxies=settings["proxies"],
    )
    # One read of the whole body: requests would read a bulk answer (megabytes) in 10 kB
    # pieces, a measurable share of an upload's CPU time. The deadline cuts the
    # connection if the body trickles in.
    with response:
        response._content = response.raw.read(decode_content=True)
    if response.cookies:
        session.cookies.update(response.cookies)
    return response


class Sessions:
    """A client's requests sessions: each request borrows one no other request is using
    (a session is not safe to share between threads at once) and gives it back, so its
    kept-alive connections serve the next request of any thread. A session per thread
    instead would open a connection for every short-lived thread, as an upload's pool
    makes for each sample of a lot."""

    def __init__(self, make: Callable[[], requests.Session]) -> None:
        self._make = make
        self._idle: list[requests.Session] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lend(self) -> Iterator[requests.Session]:
        with self._lock:
            session = self._idle.pop() if self._idle else None
        if session is None:
            session = self._make()
        try:
            yield session
        finally:
            with self._lock:
                self._idle.append(session)
