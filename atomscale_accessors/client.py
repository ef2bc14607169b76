"""Configuration, the HTTP session, and one method per route of the Atomscale API.

The client speaks HTTP and nothing else: it turns non-2xx answers into
:class:`~atomscale_accessors.errors.ApiError` and network failures into
:class:`~atomscale_accessors.errors.TransportError` (saying whether the request may have
reached the server). Deciding what to retry is the upload's job, because only it knows
whether a request is safe to repeat.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import json
import logging
import os
import platform
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import msgspec
import requests
import urllib3

from . import __version__
from .errors import ApiError, ConfigurationError, InvalidIdentifierError, TransportError
from .schemas import is_uuid

__all__ = ["DEFAULT_ENDPOINT", "Client", "RetryPolicy", "check_uuid", "resolve_client"]

log = logging.getLogger("atomscale_accessors")
_decode = msgspec.json.Decoder().decode

DEFAULT_ENDPOINT = "https://api.atomscale.ai/"
_KEY_VARIABLES = ("AS_API_KEY", "ATOMSCALE_API_KEY")
_ENDPOINT_VARIABLE = "AS_API_ENDPOINT"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard an upload tries before giving up on a chunk.

    Attributes
    ----------
    max_attempts : int
        Attempts per chunk for failures that provably did not take effect (refused
        connections, 429, 503), the first attempt included.
    backoff : float
        First wait in seconds when the server gives no ``Retry-After``; doubles each time.
    max_wait : float
        Cap on any single wait, including one asked for by ``Retry-After``.
    settle : float or None
        Seconds to wait after a timeout (or a 504) before asking the server what landed,
        since it may still be working on the request. Default: twice the read timeout,
        capped by ``max_wait``.
    """

    max_attempts: int = 6
    backoff: float = 0.25
    max_wait: float = 30.0
    settle: float | None = None

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` >= 1)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_wait))
        return min(self.backoff * 2 ** (attempt - 1), self.max_wait)


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
    timeout : float or (float, float), default (10, 120)
        Connect and read timeouts in seconds for every request.
    retry : RetryPolicy, optional
        Retry behaviour of uploads made with this client.
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
        timeout: float | tuple[float, float] = (10.0, 120.0),
        retry: RetryPolicy | None = None,
        allow_insecure: bool = False,
        verify: bool | str = True,
    ) -> None:
        key = api_key if api_key is not None else _from_env(_KEY_VARIABLES)
        if not key:
            raise ConfigurationError(
                "no Atomscale API key: pass api_key=..., or set AS_API_KEY "
                "(or ATOMSCALE_API_KEY) in the environment"
            )
        if not isinstance(key, str) or any(c in key for c in "\r\n"):
            raise ConfigurationError("the API key must be a single-line string")
        self._api_key = key
        self.endpoint = _normalise_endpoint(
            endpoint
            if endpoint is not None
            else os.environ.get(_ENDPOINT_VARIABLE) or DEFAULT_ENDPOINT
        )
        _check_transport(self.endpoint, allow_insecure)
        self.timeout = timeout if isinstance(timeout, tuple) else (float(timeout), float(timeout))
        self.retry = retry or RetryPolicy()
        if not verify:  # None, 0 and "" switch verification off in requests too
            verify = False
            warnings.warn(
                "TLS certificate verification is off for this client: answers can be forged "
                "and the API key read by anyone on the path",
                stacklevel=2,
            )
        self.verify = verify
        self._local = threading.local()
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
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    # -- transport ------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        """The calling thread's session (requests sessions are not safe to share)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(
                {
                    "X-API-KEY": self._api_key,
                    "User-Agent": self.user_agent,
                    "Accept": "application/json",
                }
            )
            session.verify = self.verify
            if self.endpoint.startswith("http://"):
                # Plain http is allowed to loopback only: never route it, and the key with
                # it, through a proxy taken from the environment.
                session.trust_env = False
            self._local.session = session
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
        """Send one request; return the 2xx response or raise ``ApiError``/``TransportError``."""
        headers = {}
        if json_body is not None:
            data = json.dumps(json_body, allow_nan=False).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(
                method,
                self.url(path),
                data=data,
                params=params,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
            # One read of the whole body: requests would read a bulk answer (megabytes)
            # in 10 kB pieces, a measurable share of an upload's CPU time.
            with response:
                response._content = response.raw.read(decode_content=True)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise _transport_error(exc, method, path) from None
        if not 200 <= response.status_code < 300:
            raise ApiError(
                response.status_code,
                _scrub(_detail(response), self._api_key),
                method=method,
                path="/" + path.lstrip("/"),
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        return response

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`request`, with the answer parsed as JSON."""
        response = self.request(method, path, **kwargs)
        try:
            return _decode(response.content)
        except msgspec.DecodeError as exc:
            raise ApiError(
                response.status_code,
                _scrub(f"the answer is not JSON: {response.text[:200]!r}", self._api_key),
                method=method,
                path="/" + path.lstrip("/"),
            ) from exc

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
            raise ApiError(200, "the annotation list is not JSON", method="GET") from None

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


def _from_env(names: Iterable[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _normalise_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str):
        raise ConfigurationError(
            f"the endpoint must be a URL string, not {type(endpoint).__name__}"
        )
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        # The value is not shown: arguments given in the wrong order put the key here.
        raise ConfigurationError(
            "the endpoint must be an http(s) URL such as https://api.atomscale.ai/"
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigurationError("the endpoint must not carry credentials, a query or a fragment")
    # Keep any path prefix: joining "http://host/prefix" with "physical_samples/" must
    # give "http://host/prefix/physical_samples/", not drop "prefix".
    path = quote(parts.path.rstrip("/"), safe="/%") + "/"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_transport(endpoint: str, allow_insecure: bool) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme == "http" and not allow_insecure and not _is_loopback(parts.hostname or ""):
        raise ConfigurationError(
            f"refusing to send the API key over plain http to {parts.hostname}: use https, "
            "or pass allow_insecure=True if this network is trusted"
        )


def _transport_error(
    exc: requests.exceptions.RequestException, method: str, path: str
) -> TransportError:
    sent = not _never_sent(exc)
    kind = type(exc).__name__
    where = f"{method} /{path.lstrip('/')}"
    if sent:
        message = f"{where} failed after the request was sent ({kind}); it may have taken effect"
    else:
        message = f"{where} could not reach the server ({kind})"
    timed_out = isinstance(exc, requests.exceptions.ReadTimeout)
    return TransportError(message, sent=sent, timed_out=timed_out)


def _never_sent(exc: BaseException) -> bool:
    """Whether a requests error proves the request never reached the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.SSLError):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    # requests wraps urllib3's MaxRetryError, whose reason is the real cause.
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        name = type(item).__name__
        if name in {"NewConnectionError", "NameResolutionError", "ConnectionRefusedError"}:
            return True
        if isinstance(item, ConnectionRefusedError):
            return True
        stack.extend([getattr(item, "reason", None), item.__cause__, item.__context__])
        stack.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
    return False


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def _scrub(detail: Any, secret: str) -> Any:
    """The server's detail with any echo of the key masked."""
    if isinstance(detail, str):
        return detail.replace(secret, "***") if secret in detail else detail
    if isinstance(detail, list):
        return [_scrub(item, secret) for item in detail]
    if isinstance(detail, dict):
        return {key: _scrub(value, secret) for key, value in detail.items()}
    return detail


def _detail(response: requests.Response) -> Any:
    try:
        body = _decode(response.content)
    except msgspec.DecodeError:
        return response.text[:1000]
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body
