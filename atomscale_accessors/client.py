"""Configuration, the HTTP session, and one method per route of the Atomscale API.

The client speaks HTTP and nothing else: it turns non-2xx answers into
:class:`~atomscale_accessors.errors.ApiError` and network failures into
:class:`~atomscale_accessors.errors.TransportError` (saying whether the request may have
reached the server). Its session repeats GET and PATCH requests after failures that may
pass (:func:`~atomscale_accessors.retry.transport_retry`); what follows a failed bulk
create, which is not safe to repeat, is the upload's to decide.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import platform
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec
import requests
import requests.adapters
import urllib3
import urllib3.connection

from . import __version__
from .deadline import WATCHDOG, DeadlineAdapter
from .errors import ApiError, InvalidIdentifierError, TransportError
from .fields import is_uuid
from .retry import RetryPolicy, retry_after_seconds, transport_retry
from .sessions import Sessions, prepare, send
from .settings import (
    check_deadline,
    check_key,
    check_transport,
    from_env,
    normalise_endpoint,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENDPOINT_VARIABLE",
    "KEY_VARIABLES",
    "Client",
    "RetryPolicy",
    "check_uuid",
    "resolve_client",
]

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder().decode

DEFAULT_ENDPOINT = "https://api.atomscale.ai/"
#: Where the key is read from, in order: the official SDK's variables.
KEY_VARIABLES = ("AS_API_KEY", "ATOMSCALE_API_KEY")
#: Where the endpoint is read from.
ENDPOINT_VARIABLE = "AS_API_ENDPOINT"


def check_uuid(value: Any, what: str = "sample id") -> str:
    """Return ``value`` as a canonical lower-case UUID string, or raise.

    Ids are checked before they are put into a URL, so a value such as ``"../x?y=1"``
    never reaches the network.
    """
    if not is_uuid(value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise InvalidIdentifierError(
            f"{what} must be a UUID like 'a1b2c3d4-5678-90ab-cdef-1234567890ab', got {shown}"
        )
    return str(value).lower()


class Client:
    """A connection to the Atomscale API (or to the local server).

    Parameters
    ----------
    api_key : str, optional
        The API key; default ``AS_API_KEY``, then ``ATOMSCALE_API_KEY`` from the environment.
    endpoint : str, optional
        Base URL; default ``AS_API_ENDPOINT``, then ``https://api.atomscale.ai/``. A path
        prefix (``https://host/prefix``) is kept, with or without a trailing slash.
    timeout : float or (float, float), default (10, 60)
        Connect and read timeouts in seconds. The read timeout is the longest silence
        accepted from the server: waiting for the answer to start, or between two pieces
        of it. While a request body is sent, each 256 kB piece must leave within the
        connect timeout.
    deadline : float or None, default 180
        Most seconds one request may take in all: connecting, sending the body and
        receiving the whole answer. A server that keeps a request alive by answering a
        few bytes at a time is cut off then, with a
        :class:`~atomscale_accessors.errors.TransportError` saying that the request may
        have taken effect (``sent`` and ``timed_out`` true). ``None`` for no deadline.
        Raise it for very large answers on slow links (a ``fetch`` of a sample holding
        millions of annotations).
    retry : RetryPolicy, optional
        How hard requests made with this client are retried: every GET and PATCH (by the
        session's transport), and the chunks of an upload. The bounds apply to each call;
        :attr:`deadline` bounds a call with all its attempts.
    allow_insecure : bool, default False
        Allow sending the key over plain ``http://`` to a host that is not loopback.
    verify : bool or str, default True
        TLS verification, or a CA bundle path. Switching it off warns.

    Examples
    --------
    >>> from atomscale_accessors import Client
    >>> client = Client(api_key="secret-key", endpoint="http://127.0.0.1:8000")
    >>> client
    Client(endpoint='http://127.0.0.1:8000/')
    >>> "secret" in repr(client)
    False
    """

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str | None = None,
        *,
        timeout: float | tuple[float, float] = (10.0, 60.0),
        deadline: float | None = 180.0,
        retry: RetryPolicy | None = None,
        allow_insecure: bool = False,
        verify: bool | str = True,
    ) -> None:
        self._api_key = check_key(api_key if api_key is not None else from_env(KEY_VARIABLES))
        self.endpoint = normalise_endpoint(
            endpoint
            if endpoint is not None
            else os.environ.get(ENDPOINT_VARIABLE) or DEFAULT_ENDPOINT
        )
        check_transport(self.endpoint, allow_insecure)
        self.timeout = timeout if isinstance(timeout, tuple) else (float(timeout), float(timeout))
        self.deadline = check_deadline(deadline)
        self.retry = retry or RetryPolicy()
        if not verify:  # None, 0 and "" switch verification off in requests too
            verify = False
            warnings.warn(
                "TLS certificate verification is off for this client: answers can be forged "
                "and the API key read by anyone on the path",
                stacklevel=2,
            )
        self.verify = verify
        self._sessions = Sessions(self._new_session)
        self.user_agent = (
            f"atomscale-accessors/{__version__} (Python/{platform.python_version()} "
            f"{platform.system()}/{platform.release()})"
        )

    @property
    def api_key(self) -> str:
        """The key in use (never shown in ``repr``, logs or errors)."""
        return self._api_key

    def __repr__(self) -> str:
        return f"Client(endpoint={self.endpoint!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Sessions hold sockets and locks; a copy (e.g. sent to a dask worker) makes its own.
        state = self.__dict__.copy()
        del state["_sessions"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sessions = Sessions(self._new_session)

    # -- transport ------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        """One of the client's sessions, as every request gets one: its headers, TLS
        verification and adapters. Each request takes a session that no other request is
        using, and gives it back when done, so connections are kept alive from one
        request to the next whichever thread makes them."""
        with self._sessions.lend() as session:
            return session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers.update(
            {
                "X-API-KEY": self._api_key,
                "User-Agent": self.user_agent,
                "Accept": "application/json",
            }
        )
        session.verify = self.verify
        for prefix in ("https://", "http://"):
            session.mount(prefix, DeadlineAdapter(max_retries=transport_retry(self.retry)))
        if self.endpoint.startswith("http://"):
            # Plain http is allowed to loopback only: never route it, and the key with
            # it, through a proxy taken from the environment.
            session.trust_env = False
        return session

    def url(self, path: str) -> str:
        """The absolute URL of an API path such as ``physical_samples/``."""
        return self.endpoint + path.lstrip("/")

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> requests.Response:
        """Send one request; return the 2xx response or raise ``ApiError``/``TransportError``.

        The whole request, the answer's body included, is bounded by :attr:`deadline`.
        """
        if json_body is not None:
            data = json.dumps(json_body, allow_nan=False).encode()
        failure: BaseException | None = None
        deadline = WATCHDOG.begin(self.deadline)
        try:
            with self._sessions.lend() as session:
                response = send(
                    session, prepare(session, method, self.url(path), data, params), self.timeout
                )
        except _NETWORK_ERRORS as exc:
            failure = exc
        finally:
            late = WATCHDOG.end(deadline)
        if failure is not None or late:
            # Cut at the deadline, an answer may look complete without being so (a status
            # line and no headers reads as an empty body), so it fails even without an
            # error. Raised here, not in the except block: there the requests exception
            # would become the error's __context__, and with it the request headers (the
            # key), which pickling (dask's tblib) and traceback printing carry along.
            error = _transport_error(
                failure, method, self.url(path), deadline=self.deadline if late else None
            )
            failure = None
            raise error
        if not 200 <= response.status_code < 300:
            raise ApiError(
                response.status_code,
                _detail(response, self._api_key),
                method=method,
                path="/" + path.lstrip("/"),
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        return response

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, with the answer parsed as JSON."""
        response = self.request(method, path, **kwargs)
        try:
            return _decode(response.content)
        except msgspec.DecodeError:
            pass
        # (raised outside the except block, so that no context is attached)
        shown = _excerpt(response.text, self._api_key, 200)
        raise ApiError(
            response.status_code,
            f"the answer is not JSON: {shown!r}",
            method=method,
            path="/" + path.lstrip("/"),
        )

    # -- one method per route -----------------------------------------------------------
    def list_samples(self, physical_sample_id: str | None = None) -> list[dict[str, Any]]:
        """``GET /physical_samples/``: the samples visible to the key."""
        params = {}
        if physical_sample_id is not None:
            params["physical_sample_id"] = check_uuid(physical_sample_id)
        return self.request_json("GET", "physical_samples/", params=params)

    def create_sample(self, name: str) -> dict[str, Any]:
        """``POST /physical_samples/``: a new sample (``ApiError`` 409 when the name is taken)."""
        return self.request_json("POST", "physical_samples/", json_body={"name": name})

    def list_annotations(
        self,
        physical_sample_id: str,
        *,
        property_name: str | None = None,
        char_source_type: str | None = None,
        x_range: tuple[float | None, float | None] | None = None,
        y_range: tuple[float | None, float | None] | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /physical_samples/{id}/annotations/``: the sample's annotations.

        A box filter applies to an axis only when both bounds are given (inclusive).
        """
        raw = self.list_annotations_raw(
            physical_sample_id,
            property_name=property_name,
            char_source_type=char_source_type,
            x_range=x_range,
            y_range=y_range,
        )
        try:
            return _decode(raw)
        except msgspec.DecodeError:
            pass
        raise ApiError(200, "the annotation list is not JSON", method="GET")

    def list_annotations_raw(
        self,
        physical_sample_id: str,
        *,
        property_name: str | None = None,
        char_source_type: str | None = None,
        x_range: tuple[float | None, float | None] | None = None,
        y_range: tuple[float | None, float | None] | None = None,
    ) -> bytes:
        """:meth:`list_annotations`, answered as the raw JSON bytes (for fast decoders)."""
        sid = check_uuid(physical_sample_id)
        params: dict[str, Any] = {}
        if property_name is not None:
            params["property_name"] = property_name
        if char_source_type is not None:
            params["char_source_type"] = char_source_type
        for axis, bounds in (("x", x_range), ("y", y_range)):
            if bounds is None:
                continue
            low, high = bounds
            if low is not None:
                params[f"{axis}_min"] = repr(float(low))
            if high is not None:
                params[f"{axis}_max"] = repr(float(high))
        return self.request("GET", f"physical_samples/{sid}/annotations/", params=params).content

    def create_annotation(
        self, physical_sample_id: str, annotation: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST /physical_samples/{id}/annotations/``: one annotation."""
        sid = check_uuid(physical_sample_id)
        return self.request_json(
            "POST", f"physical_samples/{sid}/annotations/", json_body=dict(annotation)
        )

    def create_annotations(
        self, physical_sample_id: str, annotations: Iterable[Mapping[str, Any]] | bytes
    ) -> list[dict[str, Any]]:
        """``POST /physical_samples/{id}/annotations/bulk``: several annotations at once.

        ``annotations`` is a list of annotation bodies, or an already encoded
        ``{"annotations": [...]}`` body as bytes.
        """
        sid = check_uuid(physical_sample_id)
        if isinstance(annotations, bytes):
            body = annotations
        else:
            body = json.dumps(
                {"annotations": [dict(a) for a in annotations]}, allow_nan=False
            ).encode()
        return self.request_json("POST", f"physical_samples/{sid}/annotations/bulk", data=body)

    def update_annotation(
        self, physical_sample_id: str, annotation_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``PATCH /physical_samples/{id}/annotations/{annotation_id}``: change some fields."""
        sid = check_uuid(physical_sample_id)
        aid = check_uuid(annotation_id, "annotation id")
        return self.request_json(
            "PATCH", f"physical_samples/{sid}/annotations/{aid}", json_body=dict(changes)
        )

    # -- samples and projects -------------------------------------------------------------
    def get_sample(self, physical_sample_id: str) -> dict[str, Any]:
        """``GET /physical_samples/{id}``: one sample (``ApiError`` 404 when unknown)."""
        sid = check_uuid(physical_sample_id)
        return self.request_json("GET", f"physical_samples/{sid}")

    def list_projects(self) -> list[dict[str, Any]]:
        """``GET /projects/``: the projects visible to the key."""
        return self.request_json("GET", "projects/")

    def list_project_samples(self, project_id: str) -> list[dict[str, Any]]:
        """``GET /projects/{id}/physical_samples``: the samples a project tracks."""
        pid = check_uuid(project_id, "project id")
        return self.request_json("GET", f"projects/{pid}/physical_samples")

    def add_sample_to_project(self, project_id: str, physical_sample_id: str) -> Any:
        """``POST /projects/{id}/configuration/tracking_samples``: a project tracks a sample.

        The sample is not made the project's active one (``set_active`` false): adding
        samples must not change what a running stream is attached to.
        """
        pid = check_uuid(project_id, "project id")
        body = {"physical_sample_id": check_uuid(physical_sample_id), "set_active": False}
        return self.request_json(
            "POST", f"projects/{pid}/configuration/tracking_samples", json_body=body
        )


def resolve_client(client: Any = None) -> Client:
    """A :class:`Client` from ``None`` (the environment), a ``Client``, or an SDK client.

    A client object of the official ``atomscale`` SDK (anything with ``api_key`` and
    ``endpoint`` attributes) is accepted without importing that package.
    """
    if client is None:
        return Client()
    if isinstance(client, Client):
        return client
    key = getattr(client, "api_key", None)
    endpoint = getattr(client, "endpoint", None)
    if isinstance(key, str) and isinstance(endpoint, str):
        return Client(api_key=key, endpoint=endpoint)
    raise TypeError(
        f"client must be an atomscale_accessors.Client or an object with api_key and endpoint "
        f"attributes, got {type(client).__name__}"
    )


_NETWORK_ERRORS = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
# Refused by requests before anything is sent.
_NOT_SENT = (
    requests.exceptions.ConnectTimeout,
    requests.exceptions.SSLError,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
)


def _transport_error(
    exc: BaseException | None, method: str, url: str, *, deadline: float | None = None
) -> TransportError:
    """The error for a failed request to ``url``; ``deadline`` when it failed because
    that passed.

    The message names the URL (an endpoint never holds credentials: see
    ``settings.normalise_endpoint``) and the kind of failure only: the failure itself
    holds the request, whose headers hold the key.
    """
    where = f"{method} {url}"
    # Only a request that changes something can have "taken effect".
    effect = "" if method in ("GET", "HEAD") else "; it may have taken effect"
    if deadline is not None:
        message = (
            f"{where} was cut off after the client's deadline of {deadline:g} s without a "
            f"complete answer{effect}"
        )
        return TransportError(message, sent=True, timed_out=True)
    assert exc is not None
    sent = not _never_sent(exc)
    kind = type(exc).__name__
    if sent:
        message = f"{where} failed after the request was sent ({kind}){effect}"
    else:
        message = f"{where} could not reach the server ({kind})"
    # A read timeout of the last attempt (retried GETs end wrapped in MaxRetryError).
    timed_out = sent and any(
        isinstance(item, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError)
        for item in _causes(exc)
    )
    return TransportError(message, sent=sent, timed_out=timed_out)


def _never_sent(exc: BaseException) -> bool:
    """Whether a requests error proves the request never reached the server."""
    if isinstance(exc, _NOT_SENT):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    never = {"NewConnectionError", "NameResolutionError", "ConnectionRefusedError"}
    return any(
        type(item).__name__ in never or isinstance(item, ConnectionRefusedError)
        for item in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: requests wraps urllib3's MaxRetryError, whose
    reason is the real cause."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
        stack.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))


def _scrub(detail: Any, secret: str) -> Any:
    """The server's detail with any echo of the key masked."""
    if isinstance(detail, str):
        return detail.replace(secret, "***") if secret in detail else detail
    if isinstance(detail, list):
        return [_scrub(item, secret) for item in detail]
    if isinstance(detail, dict):
        return {_scrub(key, secret): _scrub(value, secret) for key, value in detail.items()}
    return detail


_KEY_PIECE = 4
"""Shortest beginning of the key masked where an excerpt cuts an echo of it."""


def _excerpt(text: str, secret: str, limit: int) -> str:
    """The first ``limit`` characters of ``text``, with any echo of the key masked.

    Masked before cutting, since a cut through the key would leave its beginning, which
    a mask applied afterwards no longer recognises; a beginning of the key left at the
    cut by a longer echo is masked too.
    """
    text = text.replace(secret, "***")
    if len(text) <= limit:
        return text
    text = text[:limit]
    for size in range(min(len(secret) - 1, limit), _KEY_PIECE - 1, -1):
        if text.endswith(secret[:size]):
            return text[:-size] + "***"
    return text


def _detail(response: requests.Response, secret: str) -> Any:
    """The server's ``detail`` (or the body, cut), with any echo of the key masked."""
    try:
        body = _decode(response.content)
    except msgspec.DecodeError:
        return _excerpt(response.text, secret, 1000)
    if isinstance(body, dict) and "detail" in body:
        body = body["detail"]
    return _scrub(body, secret)
