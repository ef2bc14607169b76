"""The routes of the local Atomscale-compatible server.

:func:`create_app` builds a FastAPI application over a :class:`~.store.Store`. A small ASGI
middleware in front of the routes counts every request, checks the API key, applies the
rate limit, the latency and the injected faults, and refuses bodies whose
``Content-Length`` is over the limit before a byte of them is read. The handlers read the
raw body and validate it with pydantic straight from the JSON bytes, and answer with
pre-encoded JSON: FastAPI's ``jsonable_encoder`` and response models would cost more than
the whole insert on 5,000-annotation bulk requests.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import math
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import TypeAdapter
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from . import _json
from .annotation_routes import annotation_routes
from .faults import Decision, Faults, Injection, Limits
from .handling import (
    AfterCommit,
    BeforeCommit,
    too_large_message,
)
from .models import (
    annotation_adapter,
    bulk_adapter,
    patch_adapter,
    sample_adapter,
    tracking_adapter,
)
from .sample_routes import RouteSpec, sample_routes
from .store import Store

__all__ = ["DOCS_PATH", "OPENAPI_PATH", "create_app"]

_T = TypeVar("_T")

# Where the middleware leaves the faults that act inside the handler (around the commit).
_DECISION_KEY = "atomscale.faults"

# uvicorn's own log: the command line shows it, LocalServer keeps it at WARNING.
_log = logging.getLogger("uvicorn.error")

_NO_FAULTS = Decision()

_ANNOTATION_NOT_FOUND = "Annotation not found"

#: The API page (Swagger UI) and the schema it shows: served without a key, so that a
#: browser can open them; "Authorize" there takes the key for the requests it sends.
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
_OPEN_PATHS = frozenset({DOCS_PATH, f"{DOCS_PATH}/oauth2-redirect", OPENAPI_PATH})
# Paths written with a trailing slash in the contract (collections).
_COLLECTIONS = ("/physical_samples", "/annotations", "/projects")
_KEY_SCHEME = {"APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-KEY"}}
_REF = "#/components/schemas/{model}"
# The handlers read raw bodies, so FastAPI cannot see their schemas: they are given here.
_BODY_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "create_sample": sample_adapter,
    "add_project_sample": tracking_adapter,
    "create_annotation": annotation_adapter,
    "bulk_create": bulk_adapter,
    "update_annotation": patch_adapter,
}


def _body_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """Each body route's ``requestBody``, and the models they refer to."""
    bodies, models = {}, {}
    for name, adapter in _BODY_ADAPTERS.items():
        schema = adapter.json_schema(ref_template=_REF)
        models.update(schema.pop("$defs", {}))
        content = {"application/json": {"schema": schema}}
        bodies[name] = {"requestBody": {"required": True, "content": content}}
    return bodies, models


_BODIES, _BODY_MODELS = _body_schemas()


def create_app(
    store: Store,
    api_key: str,
    faults: Faults | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """Build the server application.

    Parameters
    ----------
    store : Store
        Where samples and annotations live.
    api_key : str
        The key every request must carry in ``X-API-KEY``.
    faults : Faults, optional
        Fault switches and request counters; a fresh, inactive one by default.
    limits : Limits, optional
        Request size limits; the defaults of :class:`~.faults.Limits` by default.

    Returns
    -------
    fastapi.FastAPI
        The application. ``app.state.uvicorn_server`` must be set to the running
        ``uvicorn.Server`` for the ``drop_*`` faults to work (they close the request's
        connection at the transport, which only the server can reach).
    """
    if not api_key:
        raise ValueError("the server requires an API key")
    faults = Faults() if faults is None else faults
    limits = Limits() if limits is None else limits

    app = FastAPI(
        title="atomscale-accessors local server",
        # The service's routes are used in both slash forms; a redirect would turn a
        # POST into a second request, so both forms are registered and none redirects.
        redirect_slashes=False,
        docs_url=DOCS_PATH,
        redoc_url=None,
        openapi_url=OPENAPI_PATH,
    )
    app.state.store = store
    app.state.faults = faults
    app.state.limits = limits
    app.state.uvicorn_server = None

    before_commit, after_commit = _commit_hooks(app)
    routes: Sequence[RouteSpec] = (
        *sample_routes(store, limits, before_commit, after_commit),
        *annotation_routes(store, limits, faults, before_commit, after_commit),
    )
    for path, endpoint, method, name in routes:
        # Both forms are served; the API page shows the one the contract writes.
        shown = f"{path}/" if path.endswith(_COLLECTIONS) else path
        for form in (path, f"{path}/"):
            app.add_api_route(
                form,
                endpoint,
                methods=[method],
                name=name,
                include_in_schema=form == shown,
                openapi_extra=_BODIES.get(name),
            )
    # FastAPI's documented way to change the schema is to replace app.openapi.
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_middleware(
        _Gate, api_key=api_key, faults=faults, limits=limits, routes=app.router.routes
    )
    return app


# -- the gate in front of the routes ---------------------------------------------------


def _commit_hooks(app: FastAPI) -> tuple[BeforeCommit, AfterCommit]:
    """The fault hooks every route runs around its commit: latency, errors and dropped
    connections before or after it, as the request's decision says."""

    async def before_commit(request: Request) -> Response | None:
        decision: Decision = request.scope.get(_DECISION_KEY, _NO_FAULTS)
        if decision.latency_before_commit:
            # The body is read: the commit that follows happens even if the client leaves.
            await asyncio.sleep(decision.latency_before_commit)
        fault = decision.fault
        if fault is None:
            return None
        if fault.kind == "error_before_commit":
            return _fault_response(fault)
        if fault.kind == "drop_before_commit":
            return await _drop_connection(app, request)
        return None

    async def after_commit(request: Request, response: Response) -> Response:
        decision: Decision = request.scope.get(_DECISION_KEY, _NO_FAULTS)
        if decision.latency_after_commit:
            await asyncio.sleep(decision.latency_after_commit)
        fault = decision.fault
        if fault is None:
            return response
        if fault.kind == "error_after_commit":
            return _fault_response(fault)
        if fault.kind == "drop_after_commit":
            return await _drop_connection(app, request)
        return response

    return before_commit, after_commit


class _Gate:
    """Counting, authentication, rate limit, latency, injected faults, body size.

    A plain ASGI middleware rather than a FastAPI dependency: it must run for every
    request, also those that match no route, and refuse oversized bodies before the
    routing machinery could touch them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str,
        faults: Faults,
        limits: Limits,
        routes: Sequence[BaseRoute],
    ) -> None:
        self.app = app
        self._key = api_key.encode()
        self._faults = faults
        self._limits = limits
        self._routes = routes

    def _route_name(self, scope: Scope) -> str | None:
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "name", None)
        return None

    async def _authenticated(self, scope: Scope, send: Send) -> bool:
        """Whether the request carries the key; if not, it is answered 401 here."""
        key = _header(scope, b"x-api-key")
        if key is None:
            await _send_json(send, 401, {"detail": "Missing API key (X-API-KEY header)"})
            return False
        if not hmac.compare_digest(key, self._key):
            await _send_json(send, 401, {"detail": "Invalid API key"})
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_open(scope):
            await self.app(scope, receive, send)
            return
        faults = self._faults
        route = self._route_name(scope)
        faults.count(route)
        if faults.latency:
            await asyncio.sleep(faults.latency)  # async: other requests go on meanwhile

        if not await self._authenticated(scope, send):
            return
        if route is None:  # FastAPI answers 404 or 405
            await self.app(scope, receive, send)
            return

        wait = faults.admit()
        if wait is not None:
            await _send_json(
                send,
                429,
                {"detail": "Rate limit exceeded"},
                [(b"retry-after", _retry_after(wait))],
            )
            return

        decision = faults.decide(route)
        if decision.latency:
            await asyncio.sleep(decision.latency)
        fault = decision.fault
        if fault is not None and fault.kind == "rate_limited":
            headers = []
            if fault.retry_after is not None:
                headers.append((b"retry-after", _retry_after(fault.retry_after)))
            await _send_json(send, 429, {"detail": "Rate limit exceeded"}, headers)
            return

        limit = self._limits.max_body_bytes
        declared = _header(scope, b"content-length")
        if limit is not None and declared is not None and declared.isdigit():
            size = int(declared)
            if size > limit:
                # Answered before the body is read; the server discards the body as it
                # arrives, so the client can finish sending and read this answer.
                await _send_json(send, 413, {"detail": too_large_message(size, limit)})
                return

        scope[_DECISION_KEY] = decision
        await self.app(scope, receive, send)


# -- helpers ----------------------------------------------------------------------------


def _is_open(scope: Scope) -> bool:
    """Whether a request reads the API page or its schema (served without a key)."""
    return scope["method"] == "GET" and scope["path"] in _OPEN_PATHS


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _send_json(
    send: Send,
    status: int,
    payload: Any,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = _json.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _retry_after(seconds: float) -> bytes:
    """``Retry-After`` value: whole seconds, rounded up (RFC 9110 allows no fractions, and
    rounding down could tell a client to come back before it may)."""
    return str(max(0, math.ceil(seconds))).encode()


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    """Log one line where uvicorn would log a traceback: a client that leaves before it
    has sent the whole body (it timed out, or was stopped) is not an error of the server."""
    _log.info(
        "client disconnected while sending the body of %s %s", request.method, request.url.path
    )
    return Response(status_code=400)  # never delivered: the connection is gone


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The API schema, with the request bodies' schemas and the key as its security."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=__version__,
            description=(
                "The Atomscale API as the local server serves it. Every route needs the key"
                " in the X-API-KEY header: enter it under Authorize."
            ),
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        components["securitySchemes"] = _KEY_SCHEME
        components.setdefault("schemas", {}).update(_BODY_MODELS)
        schema["security"] = [{"APIKeyHeader": []}]
        app.openapi_schema = schema
    return app.openapi_schema


def _fault_response(fault: Injection) -> Response:
    status = fault.status or 500
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return Response(
        content=_json.dumps({"detail": f"{phrase} (injected fault)"}),
        status_code=status,
        media_type="application/json",
    )


async def _drop_connection(app: FastAPI, request: Request) -> Response:
    """Close the request's connection at once, so the client gets no answer at all.

    Raising would not do: uvicorn answers 500 to an exception. The connection is found
    among the uvicorn server's by the client's address and its transport aborted.
    """
    server = app.state.uvicorn_server
    client = request.scope.get("client")
    if server is None or client is None:
        raise RuntimeError("dropping a connection needs app.state.uvicorn_server to be set")
    peer = tuple(client)
    for connection in list(server.server_state.connections):
        address = getattr(connection, "client", None)
        if address is not None and tuple(address) == peer:
            connection.transport.abort()
            break
    else:
        raise RuntimeError(f"no open connection from {peer!r} to drop")
    await asyncio.sleep(0)  # let uvicorn see the connection lost before anything is sent
    # Never delivered: uvicorn discards the answer of a request whose connection is gone.
    return Response(status_code=500)
